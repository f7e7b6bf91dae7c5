"""Heads that turn a local module's output into a loss: DGL classifiers, InfoPro, the net's own.

Every head speaks one interface (``LocalHead``) so schedules can treat them alike:

* ``head(feature, targets, image)`` -> ``HeadOutput(loss, logits)`` with the autograd graph:
  the all-at-once computation, used by E2E, the three-path reference schedule and tests.
* ``head.accumulate(feature, targets, image, weight, backward)``: computes ``weight * loss``
  and hands it to ``backward`` (the engine's), which fills the head's parameter gradients and
  ``feature.grad`` (``feature`` is a detached leaf). Returns the detached loss. PFF heads
  override it to keep one patch in flight at a time; the gradients are the same.

``image`` is the input image restored to [0, 1] (only the reconstruction heads use it).

Every aux head is registered in ``hpff_dist.local.registry.HEADS`` and built from a config
dict through its ``from_config(ctx, **cfg)``; it declares what it needs besides the feature
(``requires``: e.g. ``{"image"}``) and the feature layouts it accepts (``layouts``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from hpff_dist.local.backward import Backward
from hpff_dist.local.losses import supervised_contrastive_loss
from hpff_dist.local.registry import HEADS, HeadContext
from hpff_dist.local.upsample_conv import upsample_conv3x3

AUX_NET_CONFIGS = ("0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f")
LOCAL_LOSSES = ("cross_entropy", "contrast")


class HeadOutput(NamedTuple):
    loss: Tensor
    logits: Tensor | None = None


class LocalHead(nn.Module):
    """Base class: subclasses implement ``forward``; ``accumulate`` is forward + backward.

    ``requires``: inputs besides the feature and targets this head itself reads (``"image"``:
    the restored input image); ``needs`` adds those of the heads it contains. ``layouts``:
    the feature layouts (``hpff_dist.local.features``) it accepts.
    """

    requires: frozenset[str] = frozenset()
    layouts: tuple[str, ...] = ("NCHW",)

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs: Any) -> LocalHead | None:
        """Build for the module ``ctx`` describes; the default passes the config through."""
        return cls(**kwargs)

    @property
    def needs(self) -> frozenset[str]:
        found = set(self.requires)
        for child in self.modules():
            if isinstance(child, LocalHead):
                found |= child.requires
        return frozenset(found)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        raise NotImplementedError

    def accumulate(
        self,
        feature: Tensor,
        targets: Tensor,
        image: Tensor | None,
        weight: float,
        backward: Backward,
    ) -> HeadOutput:
        out = self(feature, targets, image)
        backward(out.loss * weight)
        return _detached(out)


def _detached(out: HeadOutput) -> HeadOutput:
    logits = None if out.logits is None else out.logits.detach()
    return HeadOutput(out.loss.detach(), logits)


def aux_conv_width(in_channels: int, widen: float = 1.0) -> tuple[int, int]:
    """(width, stride) of the first conv of a classifier aux head.

    The reference hard-codes 16 -> 32 (stride 2), 32 -> 64 (stride 2), 64 -> 64 (stride 1).
    Rule generalising it: double the width but never beyond ``max(c, 64)``, i.e.
    ``min(2c, max(c, 64))``, and downsample (stride 2) exactly when the width grows, as a
    ResNet stage transition does. ``widen`` then scales the width.
    """
    width = min(2 * in_channels, max(in_channels, 64))
    stride = 2 if width > in_channels else 1
    return max(1, int(width * widen)), stride


def parse_aux_net(config: str) -> tuple[int, int]:
    """``'1c2f'`` -> (1 conv, 2 fully connected layers)."""
    match = re.fullmatch(r"(\d)c(\d)f", config)
    if match is None or int(match.group(2)) < 1:
        raise ValueError(
            f"aux net config {config!r} must look like '<convs>c<fcs>f' with at least one fc, "
            f"e.g. one of {AUX_NET_CONFIGS}"
        )
    return int(match.group(1)), int(match.group(2))


class ClassifierHeadBase(LocalHead):
    """A head whose ``net`` maps a feature to logits (``loss_mode='cross_entropy'``) or to an
    embedding (``'contrast'``, supervised contrastive at ``temperature``); PFF wraps these."""

    net: nn.Module
    loss_mode: str
    temperature: float

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs: Any) -> ClassifierHeadBase:
        """Input width and number of classes from the module; the rest from the config."""
        return cls(ctx.feature.channels, num_classes=ctx.num_classes, **kwargs)

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.loss_mode == "contrast":
            return supervised_contrastive_loss(outputs, targets, self.temperature)
        return F.cross_entropy(outputs, targets)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        outputs = self.net(feature)
        logits = outputs if self.loss_mode == "cross_entropy" else None
        return HeadOutput(self.criterion(outputs, targets), logits)


@HEADS.register()
class ClassifierAuxHead(ClassifierHeadBase):
    """DGL / InfoPro classifier head: ``a`` convs (+BN+ReLU), global pool, ``b`` linear layers.

    ``0c1f`` is greedy supervised learning (pool + linear). Hidden linear width is
    ``feature_dim * widen``. With ``loss='contrast'`` the output is a ``feature_dim``
    embedding trained with the supervised contrastive loss, else ``num_classes`` logits with
    cross entropy. ``pool``: side of the average pool before the linear layers (1: global
    pool, the reference; 2: a 2x2 grid flattened, DGL's spatially-reduced aux net, which keeps
    where in the map a feature fired at the same cost). Config: ``dict(type='ClassifierAuxHead',
    config='2c2f', pool=1, loss=..., widen=..., feature_dim=..., temperature=...)``; the input
    width and classes come from the context.
    """

    def __init__(
        self,
        in_channels: int,
        config: str = "1c2f",
        num_classes: int = 10,
        loss: str = "cross_entropy",
        widen: float = 1.0,
        feature_dim: int = 128,
        temperature: float = 0.07,
        pool: int = 1,
    ) -> None:
        super().__init__()
        if loss not in LOCAL_LOSSES:
            raise ValueError(f"local loss must be one of {LOCAL_LOSSES}, got {loss!r}")
        if pool < 1:
            raise ValueError(f"aux head pool must be >= 1, got {pool}")
        n_conv, n_fc = parse_aux_net(config)
        self.pool = pool
        self.config = config
        self.loss_mode = loss
        self.temperature = temperature
        out_dim = feature_dim if loss == "contrast" else num_classes
        hidden = max(1, int(feature_dim * widen))

        layers: list[nn.Module] = []
        channels = in_channels
        if n_conv:
            width, stride = aux_conv_width(in_channels, widen)
            for j in range(n_conv):
                layers += [
                    nn.Conv2d(channels, width, 3, stride if j == 0 else 1, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
        layers += [nn.AdaptiveAvgPool2d(pool), nn.Flatten()]
        channels *= pool * pool
        for j in range(n_fc):
            last = j == n_fc - 1
            layers.append(nn.Linear(channels, out_dim if last else hidden))
            if not last:
                layers.append(nn.ReLU(inplace=True))
                channels = hidden
        self.net = nn.Sequential(*layers)


@HEADS.register()
class ReconstructionHead(LocalHead):
    """InfoPro's decoder: upsample the feature to the image size, conv-BN-ReLU-conv, BCE.

    The reference ends with Sigmoid + BCELoss; we return logits and use BCE-with-logits, the
    same function but numerically safer and allowed under autocast.

    The upsampling and the first conv run fused (``upsample_conv3x3``): the same function, but
    the conv's channel mixing happens at the feature's resolution when that is cheaper. So
    ``body[0]`` is used through its parameters (its forward hooks do not run); ``body`` keeps
    the reference's layers and state_dict keys.
    """

    requires = frozenset({"image"})

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs: Any) -> ReconstructionHead:
        return cls(ctx.feature.channels, ctx.image_channels, **kwargs)

    def __init__(self, in_channels: int, image_channels: int = 3, widen: float = 1.0) -> None:
        super().__init__()
        hidden = max(1, int(12 * widen))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 1, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, image_channels, 3, 1, 1),
        )

    def reconstruct_logits(self, feature: Tensor, size: tuple[int, int]) -> Tensor:
        first = self.body[0]
        x = upsample_conv3x3(feature, size, first.weight, first.bias)
        for layer in itertools.islice(self.body, 1, None):
            x = layer(x)
        return x

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        if image is None:
            raise ValueError("a reconstruction head needs the restored input image")
        logits = self.reconstruct_logits(feature, tuple(image.shape[-2:]))
        return HeadOutput(F.binary_cross_entropy_with_logits(logits, image))


@HEADS.register()
class InfoProHead(LocalHead):
    """``ixx * reconstruction + ixy * classification`` (InfoPro's lambda_1, lambda_2).

    A part whose weight is 0 is not built (the reference evaluates it and multiplies by 0:
    same gradients, wasted compute, and parameters that never get a gradient).

    Config: ``dict(type='InfoProHead', reconstruction=<head cfg>, classifier=<head cfg>,
    ixx_1=, ixy_1=, ixx_2=, ixy_2=)``: the weights at this module follow InfoPro's linear
    schedule (``lambda_schedule``); where both are 0 no head is built (None).
    It takes either layout: its parts are built through the registry, which checks theirs
    (CNN decoder + classifier on maps, token decoder + classifier on ViT tokens).
    """

    layouts = ("NCHW", "NLC")

    @classmethod
    def from_config(
        cls,
        ctx: HeadContext,
        reconstruction: dict | None = None,
        classifier: dict | None = None,
        ixx_1: float = 5.0,
        ixy_1: float = 0.5,
        ixx_2: float = 0.0,
        ixy_2: float = 0.0,
    ) -> InfoProHead | None:
        ixx, ixy = lambda_schedule(ctx.module_index, ctx.k, ixx_1, ixy_1, ixx_2, ixy_2)
        recon = HEADS.build(reconstruction, ctx) if ixx != 0 and reconstruction else None
        clf = HEADS.build(classifier, ctx) if ixy != 0 and classifier else None
        if recon is None and clf is None:
            return None
        return cls(recon, clf, ixx, ixy)

    def __init__(
        self, reconstruction: LocalHead | None, classifier: LocalHead | None, ixx: float, ixy: float
    ) -> None:
        super().__init__()
        self.ixx = float(ixx) if reconstruction is not None else 0.0
        self.ixy = float(ixy) if classifier is not None else 0.0
        self.reconstruction = reconstruction if self.ixx != 0 else None
        self.classifier = classifier if self.ixy != 0 else None
        if self.reconstruction is None and self.classifier is None:
            raise ValueError("an InfoPro head needs a non-zero ixx or ixy")

    def _parts(self) -> list[tuple[LocalHead, float]]:
        parts = ((self.reconstruction, self.ixx), (self.classifier, self.ixy))
        return [(h, w) for h, w in parts if h is not None]

    def _combined(self, run: Callable[[LocalHead, float], HeadOutput]) -> HeadOutput:
        """``sum(w * part loss)`` over the parts ``run(part, w)`` computes; the classifier's
        logits."""
        loss: Tensor | float = 0.0
        logits = None
        for head, w in self._parts():
            out = run(head, w)
            loss = loss + w * out.loss
            if head is self.classifier:
                logits = out.logits
        return HeadOutput(loss, logits)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        return self._combined(lambda head, w: head(feature, targets, image))

    def accumulate(
        self,
        feature: Tensor,
        targets: Tensor,
        image: Tensor | None,
        weight: float,
        backward: Backward,
    ) -> HeadOutput:
        return self._combined(
            lambda head, w: head.accumulate(feature, targets, image, weight * w, backward)
        )


TaskLoss = Callable[[Tensor, Any], Tensor]


class NetHead(LocalHead):
    """The task's own head and loss on the last module: ``loss(classifier(feature), targets)``.

    The task supplies ``loss`` (classification: cross entropy, with ``ignore_index`` or label
    smoothing as configured; segmentation: a per-pixel loss on label maps), so the core never
    assumes what targets are. The classifier is deliberately *not* registered as a child
    module: it already belongs to the network, and registering it twice would list its
    parameters twice to optimizer constructors that walk the module tree.
    """

    layouts = ("NCHW", "NLC")

    def __init__(self, classifier: nn.Module, loss: TaskLoss = F.cross_entropy) -> None:
        super().__init__()
        object.__setattr__(self, "_classifier", classifier)
        self.loss = loss

    @property
    def classifier(self) -> nn.Module:
        return self._classifier

    def forward(self, feature: Tensor, targets: Any, image: Tensor | None = None) -> HeadOutput:
        logits = self._classifier(feature)
        return HeadOutput(self.loss(logits, targets), logits)


def lambda_schedule(
    module_index: int, k: int, ixx_1: float, ixy_1: float, ixx_2: float, ixy_2: float
) -> tuple[float, float]:
    """InfoPro's linear (lambda_1, lambda_2) for local module ``i``: ratio = i / (K - 2).

    ``K`` is the nominal K of the split plan, as in the reference code (so with ResNet-32 K=16,
    whose table has 15 modules, the last local module stops at ratio 13/14).
    """
    ratio = module_index / (k - 2) if k > 2 else 0.0
    return ixx_1 * (1 - ratio) + ixx_2 * ratio, ixy_1 * (1 - ratio) + ixy_2 * ratio
