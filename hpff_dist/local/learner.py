"""``LocalLearner``: a network + split plan + heads + schedule, as one ``nn.Module``.

Holding the network and every head in one module lets an engine (mmengine, DeepSpeed) see all
parameters, move them, checkpoint them and build one optimizer. Training goes through
``train_step_losses``; ``forward`` is plain inference through the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hpff_dist.local.backward import Backward, PlainBackward
from hpff_dist.local.heads import (
    ClassifierAuxHead,
    ClassifierHeadBase,
    InfoProHead,
    LocalHead,
    NetHead,
    ReconstructionHead,
    lambda_schedule,
)
from hpff_dist.local.imagenet_heads import BottleneckAuxHead, ProgressiveReconstructionHead
from hpff_dist.local.module import LocalModule
from hpff_dist.local.network import BlockNetwork
from hpff_dist.local.pff import OfficialPatchDecoder, PatchFusedClassifier, PatchwiseReconstruction
from hpff_dist.local.schedule import SCHEDULE_FUNCTIONS, StepOutput, e2e_step
from hpff_dist.local.spec import LocalSpec, build_spec
from hpff_dist.local.split import SplitPlan, build_split_plan


class LocalLearner(nn.Module):
    """Trains ``net`` with the local-learning method described by ``spec`` over ``plan``.

    Heads live in ``self.heads`` (``'ind3'``, ``'cas3'``: the independent / cascade head of
    module 3); the last module's heads are the net's own classifier. ``local_modules`` lists
    the ``LocalModule`` objects the schedule walks through.
    """

    def __init__(
        self,
        net: BlockNetwork,
        spec: LocalSpec,
        plan: SplitPlan,
        num_classes: int,
        image_channels: int = 3,
        image_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.plan = plan
        self.num_classes = num_classes
        self.image_channels = image_channels
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.heads = nn.ModuleDict()
        self.local_modules: list[LocalModule] = []
        self._feature_sizes: list[tuple[int, int]] | None = None
        if not spec.is_e2e and plan.num_modules > 1:
            self._build_modules()
            self._check_every_module_learns()

    # ----------------------------------------------------------------------- construction
    def _build_modules(self) -> None:
        net, plan, spec = self.net, self.plan, self.spec
        channels = net.block_channels
        last = plan.num_modules - 1
        net_head = NetHead(net.head)
        for m, block_indices in enumerate(plan.modules):
            layers = ([net.stem] if m == 0 else []) + [net.blocks[b] for b in block_indices]
            width = channels[block_indices[-1]]
            if m == last:
                ind = net_head if spec.last_module in ("both", "independent") else None
                cas = net_head if spec.last_module in ("both", "cascade") else None
            else:
                own_ind = m > 0 or spec.first_module in ("independent", "both")
                own_cas = m > 0 or spec.first_module == "both"
                ind = self._aux_head(m, width, "independent") if own_ind and spec.w_ind else None
                cas = self._aux_head(m, width, "cascade") if own_cas and spec.w_cas else None
            for level, head in (("ind", ind), ("cas", cas)):
                if head is not None and m != last:
                    self.heads[f"{level}{m}"] = head
            self.local_modules.append(
                LocalModule(m, layers, ind, cas, spec.w_ind, spec.w_cas, is_last=m == last)
            )

    def _aux_head(self, m: int, width: int, level: str) -> LocalHead | None:
        """The aux head of module ``m`` on ``level`` (None if InfoPro's lambdas are both 0)."""
        spec = self.spec
        kind = spec.ind_head if level == "independent" else spec.cas_head
        pff = (
            spec.pff
            if spec.pff is not None and level in spec.pff.levels and spec.pff.n > 1
            else None
        )
        paper = pff is not None and pff.variant == "paper"
        official = pff is not None and pff.variant == "official"

        def classifier() -> LocalHead:
            head: ClassifierHeadBase
            if spec.aux_net == "bottleneck":
                head = BottleneckAuxHead(
                    width,
                    self.num_classes,
                    spec.local_loss,
                    expand=spec.feature_dim,
                    widen=spec.widen,
                    feature_dim=spec.feature_dim,
                    temperature=spec.temperature,
                )
            else:
                head = ClassifierAuxHead(
                    width,
                    spec.aux_net,
                    self.num_classes,
                    spec.local_loss,
                    spec.widen,
                    spec.feature_dim,
                    spec.temperature,
                )
            return PatchFusedClassifier(head, pff.n) if paper else head

        def decoder() -> LocalHead:
            if spec.decoder == "progressive":
                return ProgressiveReconstructionHead(
                    width,
                    self._feature_size(m),
                    self._required_image_size(),
                    self.image_channels,
                    spec.decoder_width,
                    widen=spec.widen,
                )
            return ReconstructionHead(width, self.image_channels, spec.widen)

        if kind == "classifier":
            return classifier()
        ixx, ixy = lambda_schedule(m, self.plan.k, spec.ixx_1, spec.ixy_1, spec.ixx_2, spec.ixy_2)
        if ixx == 0 and ixy == 0:
            return None
        recon: LocalHead | None = None
        if ixx != 0:
            if official:
                recon = OfficialPatchDecoder(width, n=pff.n, make_decoder=decoder)
            else:
                recon = decoder()
                recon = PatchwiseReconstruction(recon, pff.n) if paper else recon
        return InfoProHead(recon, classifier() if ixy != 0 else None, ixx, ixy)

    def _required_image_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError("decoder='progressive' needs image_size to size its upsampling")
        return self.image_size

    def _feature_size(self, m: int) -> tuple[int, int]:
        """Spatial size of local module ``m``'s output at ``image_size``.

        Found once by a no-grad forward of one blank image (BatchNorm in eval mode, so no
        running statistic moves): backbones do not declare their strides, and the progressive
        decoder's number of upsampling stages depends on them.
        """
        if self._feature_sizes is None:
            h, w = self._required_image_size()
            ref = next(self.net.parameters())
            x = torch.zeros(1, self.image_channels, h, w, dtype=ref.dtype, device=ref.device)
            modes = [(mod, mod.training) for mod in self.net.modules()]
            self.net.eval()
            sizes = []
            try:
                with torch.no_grad():
                    x = self.net.stem(x)
                    for block in self.net.blocks:
                        x = block(x)
                        if x.dim() != 4:
                            raise ValueError(
                                "decoder='progressive' needs (N, C, H, W) block outputs, got "
                                f"shape {tuple(x.shape)}"
                            )
                        sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            finally:
                for mod, training in modes:
                    mod.training = training
            self._feature_sizes = sizes
        return self._feature_sizes[self.plan.modules[m][-1]]

    def _check_every_module_learns(self) -> None:
        mods = self.local_modules
        for mod in mods:
            nxt = mods[mod.index + 1] if mod.index + 1 < len(mods) else None
            if not (mod.ind_active or mod.cas_active or (nxt is not None and nxt.sends_cascade)):
                raise ValueError(
                    f"local module {mod.index} would get no gradient with this spec "
                    f"(first_module={self.spec.first_module!r}, last_module="
                    f"{self.spec.last_module!r}, w_ind={self.spec.w_ind}, w_cas={self.spec.w_cas}"
                    f"; InfoPro heads are dropped where the lambda schedule gives ixx = ixy = 0, "
                    f"e.g. at module K-2 when ixx_2 = ixy_2 = 0)"
                )

    # ----------------------------------------------------------------------- use
    @property
    def needs_image(self) -> bool:
        """Whether ``train_step_losses`` needs the restored image (a reconstruction head)."""
        return any(
            isinstance(m, (ReconstructionHead, ProgressiveReconstructionHead, OfficialPatchDecoder))
            for m in self.heads.modules()
        )

    def forward(self, images: Tensor) -> Tensor:
        """Inference: logits of the whole network."""
        return self.net(images)

    def train_step_losses(
        self,
        images: Tensor,
        targets: Tensor,
        image_restored: Tensor | None = None,
        backward: Backward | None = None,
    ) -> StepOutput:
        """One training step's backward calls (through ``backward``); no optimizer step."""
        backward = backward if backward is not None else PlainBackward()
        if self.image_size is not None and tuple(images.shape[-2:]) != tuple(self.image_size):
            raise ValueError(f"expected {self.image_size} images, got {tuple(images.shape[-2:])}")
        if not self.local_modules:
            return e2e_step(self.net, images, targets, backward)
        if image_restored is None and self.needs_image:
            raise ValueError("this method reconstructs the input: pass image_restored in [0, 1]")
        schedule = SCHEDULE_FUNCTIONS[self.spec.schedule]
        return schedule(self.local_modules, images, targets, image_restored, backward)

    def extra_repr(self) -> str:
        return f"method={self.spec.method}, k={self.plan.k}, modules={self.plan.num_modules}"


def build_local_learner(
    net: BlockNetwork,
    arch: str | None,
    num_classes: int,
    spec: dict[str, Any] | LocalSpec,
    image_size: int | tuple[int, int] | None = None,
    image_channels: int = 3,
) -> LocalLearner:
    """Resolve ``spec`` (a dict such as ``dict(method='dgl_hpff', k=16)``) and the split plan
    (the published table for ``arch`` and K, else balanced) and build the learner."""
    spec = build_spec(spec)
    k = 1 if spec.is_e2e else spec.k
    # One module needs no table: E2E works on any depth, whatever `arch` names.
    plan = build_split_plan(arch if k > 1 else None, k, net.block_ids)
    return LocalLearner(net, spec, plan, num_classes, image_channels, image_size)
