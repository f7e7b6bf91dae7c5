"""Patch Feature Fusion (PFF): run an aux net on n x n patches of its input, one at a time.

Paper variant (default): the SAME aux net sees every patch of the feature map.
* classifier / contrast heads: patch outputs are averaged, then the loss is taken. To keep one
  patch in flight, ``accumulate`` first computes all patch outputs without a graph, gets
  dL/d(output) once, then re-runs each patch with a graph and backpropagates that cotangent.
  The no-graph pass leaves BatchNorm running statistics alone, so they are updated once per
  patch, as in the all-at-once computation.
* reconstruction heads: each feature patch reconstructs the matching image patch; the loss is
  the sum (``patch_loss='sum'``, the reference's effective scale: it sums n*n decoders' BCE)
  or the mean over patches, so patches are simply forwarded and backpropagated one by one.
* token features (``NLC``, ViT): the patches are n x n groups of the token grid; prefix tokens
  (the class token) belong to no patch. A decoder's group reconstructs the image pixels its
  tokens cover (the image is cut at the token boundaries scaled to its size).
Gradients equal the all-patches-at-once computation, which ``forward`` performs.

``official`` variant: what the reference code does on CIFAR: n*n separate decoders, one per
patch, BCE losses summed, all held in one graph (no memory saving); classifiers unpatched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hpff_dist.local.backward import Backward, backward_vjp
from hpff_dist.local.dense import split_like_feature
from hpff_dist.local.features import LAYOUTS, split_patches
from hpff_dist.local.heads import (
    ClassifierHeadBase,
    HeadOutput,
    LocalHead,
    ReconstructionHead,
    _detached,
)
from hpff_dist.local.registry import HEADS, HeadContext

PFF_VARIANTS = ("paper", "official")
PATCH_LOSSES = ("sum", "mean")


def _check_n(n: int, ctx: HeadContext, key: str = "model.method.pff.n") -> None:
    """Refuse n x n patches the module's output cannot be cut into, at build time.

    The output's size is known before any batch: the backbone declares each block's
    reduction (``FeatureInfo``) and the model states its input size (``model.image_size``).
    Without an image size (a learner built by hand) the check waits for the first batch."""
    if n < 1:
        raise ValueError(f"{key} must be >= 1, got {n}")
    if ctx.image_size is not None:
        h, w = ctx.feature_size()
        if n > min(h, w):
            raise ValueError(
                f"{key}={n}: local module {ctx.module_index}'s output is {h}x{w} at image size "
                f"{ctx.image_size[0]}x{ctx.image_size[1]} (model.image_size), too small for "
                f"{n}x{n} patches; use n <= {min(h, w)} ({key}, or the n of the level's PFF "
                "head in model.method.levels) or no PFF on this level"
            )


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorm that normalises with batch statistics but does not update the
    running ones (used for a pass that will be repeated with a graph)."""
    changed = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


@HEADS.register()
class PatchFusedClassifier(LocalHead):
    """Paper PFF around a classifier / contrast head: loss of the patch-averaged output.

    ``inner`` needs ``net`` (feature -> outputs), ``criterion`` and ``loss_mode``. Config:
    ``dict(type='PatchFusedClassifier', n=2, head=<classifier head cfg>)``.
    """

    layouts = LAYOUTS

    @classmethod
    def from_config(cls, ctx: HeadContext, head: dict, n: int = 2) -> PatchFusedClassifier:
        _check_n(n, ctx)
        feature = ctx.feature
        return cls(HEADS.build(head, ctx), n, feature.layout, feature.prefix_tokens)

    def __init__(
        self, inner: ClassifierHeadBase, n: int = 2, layout: str = "NCHW", prefix_tokens: int = 0
    ) -> None:
        super().__init__()
        missing = [a for a in ("net", "criterion", "loss_mode") if not hasattr(inner, a)]
        if missing:
            raise TypeError(
                f"PatchFusedClassifier needs a classifier-like head with net (feature -> "
                f"outputs), criterion and loss_mode; {type(inner).__name__} lacks {missing}"
            )
        self.inner = inner
        self.n = n
        self.layout = layout
        self.prefix_tokens = prefix_tokens

    def _patches(self, feature: Tensor) -> list[Tensor]:
        return split_patches(feature, self.n, self.layout, self.prefix_tokens)

    def _fused(self, outputs: Tensor, targets: Tensor) -> HeadOutput:
        logits = outputs if self.inner.loss_mode == "cross_entropy" else None
        return HeadOutput(self.inner.criterion(outputs, targets), logits)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        patches = self._patches(feature)
        mean_out = torch.stack([self.inner.net(p) for p in patches]).mean(0)
        return self._fused(mean_out, targets)

    def accumulate(
        self,
        feature: Tensor,
        targets: Tensor,
        image: Tensor | None,
        weight: float,
        backward: Backward,
    ) -> HeadOutput:
        if self._batchable(feature):
            return self._accumulate_pooled(feature, targets, weight, backward)
        patches = self._patches(feature)
        with torch.no_grad(), frozen_running_stats(self.inner):
            mean_out = sum(self.inner.net(p) for p in patches) / len(patches)
        # float32 cotangent under AMP: true-size gradients may underflow in float16.
        out_leaf = mean_out.detach()
        if out_leaf.dtype in (torch.float16, torch.bfloat16):
            out_leaf = out_leaf.float()
        out_leaf.requires_grad_()
        out = self._fused(out_leaf, targets)
        (cotangent,) = torch.autograd.grad(out.loss * weight, out_leaf)
        cotangent = cotangent / len(patches)
        for p in patches:
            backward_vjp(backward, self.inner.net(p), cotangent)
        return _detached(out)

    def _batchable(self, feature: Tensor) -> bool:
        """Whether the patches can go through the head in one pass at no memory cost.

        A head that starts with an average pool to p x p and has no convolution or BatchNorm
        (``0cXf``: pool + MLP) treats every sample on its own, and each patch's pooled p x p
        grid is exactly a p x p block of an (n p) x (n p) average pool of the whole map (when
        n p divides it). So one pooled pass replaces 2 n^2 small ones, with the same outputs
        and gradients.
        """
        net = self.inner.net
        if self.layout != "NCHW":
            return False
        if any(isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) for m in net.modules()):
            return False
        side = self._pool_side()
        h, w = feature.shape[-2:]
        return side is not None and h % (self.n * side) == 0 and w % (self.n * side) == 0

    def _pool_side(self) -> int | None:
        """p when the head starts with a square ``AdaptiveAvgPool2d(p)``, else None."""
        first = self.inner.net[0]
        if not isinstance(first, nn.AdaptiveAvgPool2d):
            return None
        size = first.output_size
        side = size if isinstance(size, int) else size[0]
        return side if isinstance(side, int) and size in (side, (side, side)) else None

    def _accumulate_pooled(
        self, feature: Tensor, targets: Tensor, weight: float, backward: Backward
    ) -> HeadOutput:
        n, batch, channels = self.n, feature.shape[0], feature.shape[1]
        p = self._pool_side()
        pooled = nn.functional.adaptive_avg_pool2d(feature, n * p)  # (B, C, n p, n p)
        # (B, C, n, p, n, p) -> (n, n, B, C, p, p): patch (i, j)'s p x p means, row-major.
        cells = pooled.view(batch, channels, n, p, n, p).permute(2, 4, 0, 1, 3, 5)
        outputs = self.inner.net(cells.reshape(n * n * batch, channels, p, p))
        mean_out = outputs.view(n * n, batch, -1).mean(0)
        out = self._fused(mean_out, targets)
        backward(out.loss * weight)
        return _detached(out)


@HEADS.register()
class PatchwiseReconstruction(LocalHead):
    """Paper PFF around a decoder: each feature patch reconstructs its image patch.

    ``inner`` is any reconstruction ``LocalHead`` (interpolating or progressive decoder).
    ``patch_loss``: ``'sum'`` of the patches' BCE (the reference's effective scale: its CIFAR
    code sums n*n decoders' losses) or their ``'mean'`` (n*n times smaller). Config:
    ``dict(type='PatchwiseReconstruction', n=2, patch_loss='sum', head=<decoder cfg>)``.
    On token features (``layout='NLC'``) the groups of grid tokens are paired with the image
    cut at the token boundaries (``split_like_feature``), so a group of r x c tokens gets the
    r x c token cells of pixels it covers; prefix tokens belong to no group.
    """

    layouts = LAYOUTS

    @classmethod
    def from_config(
        cls, ctx: HeadContext, head: dict, n: int = 2, patch_loss: str = "sum"
    ) -> PatchwiseReconstruction:
        _check_n(n, ctx)
        feature = ctx.feature
        return cls(HEADS.build(head, ctx), n, patch_loss, feature.layout, feature.prefix_tokens)

    def __init__(
        self,
        inner: LocalHead,
        n: int = 2,
        patch_loss: str = "sum",
        layout: str = "NCHW",
        prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        if patch_loss not in PATCH_LOSSES:
            raise ValueError(f"patch_loss must be one of {PATCH_LOSSES}, got {patch_loss!r}")
        self.inner = inner
        self.n = n
        self.patch_loss = patch_loss
        self.layout = layout
        self.prefix_tokens = prefix_tokens
        self._divisor = n * n if patch_loss == "mean" else 1

    def _pairs(self, feature: Tensor, image: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        if image is None:
            raise ValueError("a reconstruction head needs the restored input image")
        if self.layout == "NLC":
            groups = split_patches(feature, self.n, "NLC", self.prefix_tokens)
            side = int(round((feature.shape[1] - self.prefix_tokens) ** 0.5))
            return list(zip(groups, split_like_feature(image, (side, side), self.n)))
        return list(zip(split_patches(feature, self.n), split_patches(image, self.n)))

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        pairs = self._pairs(feature, image)
        loss = sum(self.inner(f, targets, img).loss for f, img in pairs) / self._divisor
        return HeadOutput(loss)

    def accumulate(
        self,
        feature: Tensor,
        targets: Tensor,
        image: Tensor | None,
        weight: float,
        backward: Backward,
    ) -> HeadOutput:
        pairs = self._pairs(feature, image)
        total = feature.new_zeros(())
        for f, img in pairs:
            loss = self.inner(f, targets, img).loss / self._divisor
            backward(loss * weight)
            total = total + loss.detach()
        return HeadOutput(total)


@HEADS.register()
class OfficialPatchDecoder(LocalHead):
    """The reference code's CIFAR 'PFF': n*n decoders, one per patch, BCE summed, one graph.

    ``make_decoder`` builds each decoder (default: ``ReconstructionHead``), so the variant can
    be compared with any decoder type. Config: ``dict(type='OfficialPatchDecoder', n=2,
    decoder=<decoder cfg>)``.
    """

    requires = frozenset({"image"})

    @classmethod
    def from_config(cls, ctx: HeadContext, decoder: dict, n: int = 2) -> OfficialPatchDecoder:
        _check_n(n, ctx)
        return cls(ctx.feature.channels, n=n, make_decoder=lambda: HEADS.build(decoder, ctx))

    def __init__(
        self,
        in_channels: int,
        image_channels: int = 3,
        widen: float = 1.0,
        n: int = 2,
        make_decoder: Callable[[], LocalHead] | None = None,
    ) -> None:
        super().__init__()
        self.n = n
        if make_decoder is None:

            def make_decoder() -> LocalHead:
                return ReconstructionHead(in_channels, image_channels, widen)

        self.decoders = nn.ModuleList(make_decoder() for _ in range(n * n))

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        if image is None:
            raise ValueError("a reconstruction head needs the restored input image")
        # Contiguous patches: a conv given a strided view copies it in forward and again in
        # backward; this variant holds every patch's graph anyway, so copy once and keep it.
        patches = [p.contiguous() for p in split_patches(feature, self.n)]
        pairs = zip(self.decoders, patches, split_patches(image, self.n))
        return HeadOutput(sum(dec(f, targets, img).loss for dec, f, img in pairs))
