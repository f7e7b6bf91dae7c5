"""``LocalLearner``: a network + split plan + heads + schedule, as one ``nn.Module``.

Holding the network and every head in one module lets an engine (mmengine, DeepSpeed) see all
parameters, move them, checkpoint them and build one optimizer. Training goes through
``train_step_losses``; ``forward`` is plain inference through the network.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

import hpff_dist.local.dense_heads  # noqa: F401  (registers the segmentation heads)
import hpff_dist.local.imagenet_heads  # noqa: F401  (registers the ImageNet-style heads)
import hpff_dist.local.pff  # noqa: F401  (registers the PFF wrappers)
import hpff_dist.local.token_heads  # noqa: F401  (registers the ViT token heads)
from hpff_dist.local.backward import Backward, PlainBackward
from hpff_dist.local.features import FeatureInfo
from hpff_dist.local.heads import LocalHead, NetHead, TaskLoss
from hpff_dist.local.module import BlockTap, LocalModule, ModuleLevel, ModuleTap
from hpff_dist.local.network import BlockNetwork, feature_info_of
from hpff_dist.local.pipeline import (
    PipelineStage,
    micro_batches,
    pipeline_forward,
    pipeline_stage_step,
    stage_modules_of,
)
from hpff_dist.local.registry import HEADS, HeadContext
from hpff_dist.local.schedule import SCHEDULE_FUNCTIONS, StepOutput, e2e_step
from hpff_dist.local.spec import LocalSpec, build_spec
from hpff_dist.local.split import SplitPlan, build_split_plan


class LocalLearner(nn.Module):
    """Trains ``net`` with the local-learning method described by ``spec`` over ``plan``.

    Heads live in ``self.heads`` (``'ind3'``, ``'cas3'``: the head of level ``ind`` / ``cas``
    at module 3), built from the spec's levels through the head registry, each for the
    ``FeatureInfo`` its module's output declares; the last module's head is the task's own
    (the net's classifier with ``task_loss``). ``local_modules`` lists the ``LocalModule``
    objects the schedule walks through. ``taps`` (``BlockTap``) add losses on blocks inside
    modules; their heads are in ``self.heads`` under the tap's name, and their gradient stays
    in the module holding the block (E2E: it reaches everything).
    """

    def __init__(
        self,
        net: BlockNetwork,
        spec: LocalSpec,
        plan: SplitPlan,
        num_classes: int,
        image_channels: int = 3,
        image_size: int | tuple[int, int] | None = None,
        task_loss: TaskLoss = F.cross_entropy,
        taps: tuple[BlockTap, ...] | list[BlockTap] = (),
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.plan = plan
        self.num_classes = num_classes
        self.image_channels = image_channels
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.task_loss = task_loss
        self.heads = nn.ModuleDict()
        self.local_modules: list[LocalModule] = []
        self.taps = self._check_taps(list(taps), len(net.blocks))
        #: set on a learner cut to one pipeline stage (``keep_modules``): training and
        #: inference then go through ``hpff_dist.local.pipeline``.
        self.pipeline: PipelineStage | None = None
        for tap in self.taps:
            self.heads[tap.name] = tap.head
        if not spec.is_e2e and plan.num_modules > 1:
            self._build_modules(feature_info_of(net))
            self._check_every_module_learns()

    # ----------------------------------------------------------------------- construction
    def _check_taps(self, taps: list[BlockTap], n_blocks: int) -> list[BlockTap]:
        names = [tap.name for tap in taps]
        level_names = {lv.name for lv in self.spec.resolved_levels()}
        for tap in taps:
            if not 0 <= tap.block < n_blocks:
                raise ValueError(f"tap {tap.name!r}: block {tap.block} is not in 0..{n_blocks - 1}")
            if not tap.name.isidentifier() or tap.name in level_names or names.count(tap.name) > 1:
                raise ValueError(
                    f"tap name {tap.name!r} must be an identifier unique among taps and levels "
                    f"{sorted(level_names)}"
                )
        return taps

    def _module_taps(self, m: int, block_indices: tuple[int, ...]) -> list[ModuleTap]:
        """The taps on blocks of module ``m``, at their position in its layers."""
        offset = 1 if m == 0 else 0  # module 0's layers start with the stem
        return [
            ModuleTap(tap.name, offset + block_indices.index(tap.block), tap.weight, tap.head)
            for tap in self.taps
            if tap.block in block_indices
        ]

    def _build_modules(self, features: list[FeatureInfo]) -> None:
        """One ``LocalModule`` per group of the plan, with a head per level built from the
        level's config (modules 0..K-2) or the task's head (the last module)."""
        net, plan = self.net, self.plan
        last = plan.num_modules - 1
        task_head = NetHead(net.head, self.task_loss)
        levels = self.spec.resolved_levels()
        for m, block_indices in enumerate(plan.modules):
            layers = ([net.stem] if m == 0 else []) + [net.blocks[b] for b in block_indices]
            ctx = HeadContext(
                feature=features[block_indices[-1]],
                module_index=m,
                k=plan.k,
                num_classes=self.num_classes,
                image_channels=self.image_channels,
                image_size=self.image_size,
            )
            module_levels = []
            for level in levels:
                head: LocalHead | None
                if m == last:
                    head = task_head if level.last_module else None
                elif (m > 0 or level.first_module) and level.head is not None and level.active:
                    head = HEADS.build(level.head, ctx)
                    if head is not None:
                        self.heads[f"{level.name}{m}"] = head
                else:
                    head = None
                module_levels.append(ModuleLevel(level.name, level.span, level.weight, head))
            self.local_modules.append(
                LocalModule(
                    m, layers, module_levels, m == last, self._module_taps(m, block_indices)
                )
            )

    def _check_every_module_learns(self) -> None:
        mods = self.local_modules
        for mod in mods:
            nxt = mods[mod.index + 1] if mod.index + 1 < len(mods) else None
            if not (mod.learns_itself or (nxt is not None and nxt.sends_cascade)):
                levels = [
                    (lv.name, lv.span, lv.weight, lv.first_module, lv.last_module)
                    for lv in self.spec.resolved_levels()
                ]
                raise ValueError(
                    f"local module {mod.index} would get no gradient with this spec "
                    f"(first_module={self.spec.first_module!r}, last_module="
                    f"{self.spec.last_module!r}; levels (name, span, weight, first, last): "
                    f"{levels}; InfoPro heads are dropped where the lambda schedule gives "
                    f"ixx = ixy = 0, e.g. at module K-2 when ixx_2 = ixy_2 = 0)"
                )

    # ----------------------------------------------------------------------- pipeline stages
    def keep_modules(self, start: int, end: int) -> None:
        """Keep only local modules ``[start, end)`` (one pipeline stage): the blocks, stem,
        classifier and heads of the other modules are dropped (blocks become ``nn.Identity``
        so the kept ones keep their names), so this process holds its stage's parameters
        alone and its state dict is that stage's part of the whole model's."""
        if not self.local_modules:
            raise ValueError("an end-to-end learner has no local modules to split into stages")
        if not 0 <= start < end <= len(self.local_modules):
            raise ValueError(f"modules [{start}, {end}) are not in 0..{len(self.local_modules)}")
        keep = self.local_modules[start:end]
        kept = {id(part) for part in stage_modules_of(keep)}
        net = self.net
        owned = {id(m) for m in [net.stem, *net.blocks, net.head, *self.heads.values()]}
        foreign = [
            type(part).__name__
            for part in stage_modules_of(self.local_modules)
            if id(part) not in owned and any(True for _ in part.state_dict())
        ]
        if foreign:
            raise TypeError(
                f"{type(net).__name__}: local modules use {sorted(set(foreign))} that are not "
                "its stem/blocks/head (or the learner's heads); a pipeline stage can only be cut "
                "from a network that owns its layers as those children"
            )
        for index, block in enumerate(net.blocks):
            if id(block) not in kept:
                net.blocks[index] = nn.Identity()
        if id(net.stem) not in kept:
            net.stem = nn.Identity()
        if id(net.head) not in kept:
            net.head = nn.Identity()
        for name in list(self.heads):
            if id(self.heads[name]) not in kept:
                del self.heads[name]
        self.local_modules = keep

    # ----------------------------------------------------------------------- use
    @property
    def needs(self) -> frozenset[str]:
        """What the heads read besides features and targets (``{"image"}``: the restored
        input image, for reconstruction heads), as they declare it."""
        found: set[str] = set()
        for head in self.heads.values():
            found |= head.needs
        return frozenset(found)

    @property
    def needs_image(self) -> bool:
        return "image" in self.needs

    def forward(self, images: Tensor) -> Tensor:
        """Inference: logits of the whole network (through every stage of a pipeline)."""
        if self.pipeline is not None:
            return pipeline_forward(self.local_modules, self.pipeline.link, images, self.net.head)
        return self.net(images)

    def train_step_losses(
        self,
        images: Tensor,
        targets: Any,
        image_restored: Tensor | None = None,
        backward: Backward | None = None,
    ) -> StepOutput:
        """One training step's backward calls (through ``backward``); no optimizer step."""
        backward = backward if backward is not None else PlainBackward()
        if self.image_size is not None and tuple(images.shape[-2:]) != tuple(self.image_size):
            raise ValueError(f"expected {self.image_size} images, got {tuple(images.shape[-2:])}")
        if not self.local_modules:
            return e2e_step(self.net, images, targets, backward, self.task_loss, self.taps)
        if image_restored is None and self.needs_image:
            raise ValueError("this method reconstructs the input: pass image_restored in [0, 1]")
        if self.pipeline is not None:
            # an epoch's short last batch may hold fewer samples than micro-batches
            count = min(self.pipeline.micro_batches, images.shape[0])
            batches = micro_batches(images, targets, image_restored, count)
            return pipeline_stage_step(self.local_modules, self.pipeline.link, batches, backward)
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
    task_loss: TaskLoss = F.cross_entropy,
    taps: tuple[BlockTap, ...] | list[BlockTap] = (),
) -> LocalLearner:
    """Resolve ``spec`` (a dict such as ``dict(method='dgl_hpff', k=16)``) and the split plan
    (the published table for ``arch`` and K, else balanced) and build the learner. ``taps``:
    extra losses on blocks inside modules (``BlockTap``), e.g. mmseg's auxiliary head."""
    spec = build_spec(spec)
    k = 1 if spec.is_e2e else spec.k
    # One module needs no table: E2E works on any depth, whatever `arch` names.
    plan = build_split_plan(arch if k > 1 else None, k, net.block_ids)
    return LocalLearner(net, spec, plan, num_classes, image_channels, image_size, task_loss, taps)
