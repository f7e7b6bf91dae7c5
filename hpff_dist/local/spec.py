"""The method spec: one plain dict in a config -> one validated ``LocalSpec`` -> levels.

``method`` picks a preset (a dict of spec values, ``PRESETS``); every other key overrides a
preset value. The flat keys (``aux_net``, ``w_ind``, ``pff`` ...) are shorthand for the
paper's choices: ``LocalSpec.resolved_levels()`` turns them into ``Level`` data whose heads
are registry configs, and that is all the learner reads. ``levels=[...]`` gives the levels
explicitly instead (any registered head, any level names/spans/weights): a new method is a
config, not code. Unknown keys are an error that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from hpff_dist.local.heads import LOCAL_LOSSES, parse_aux_net
from hpff_dist.local.levels import Level, check_levels, level_from, refuse_unknown_keys
from hpff_dist.local.pff import PATCH_LOSSES, PFF_VARIANTS
from hpff_dist.local.schedule import SCHEDULE_FUNCTIONS
from hpff_dist.local.token_heads import TOKEN_AUX_NETS, parse_token_aux_net

HEAD_KINDS = ("classifier", "infopro")
LEVELS = ("independent", "cascade")
FIRST_MODULE = ("cascade_only", "independent", "both")
LAST_MODULE = ("both", "independent", "cascade")
NAMED_AUX_NETS = ("bottleneck",)
DECODERS = ("interpolate", "progressive", "token")


@dataclass(frozen=True)
class PFFSpec:
    """PFF on the aux heads: ``n`` x ``n`` patches, ``variant`` paper|official, on ``levels``.

    ``patch_loss`` (paper variant, decoders): ``'sum'`` of the patches' reconstruction losses,
    the reference's effective scale (its CIFAR code sums n*n decoders' BCE), or ``'mean'``.
    """

    n: int = 2
    variant: str = "paper"
    levels: tuple[str, ...] = LEVELS
    patch_loss: str = "sum"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"model.method.pff.n must be >= 1, got {self.n}")
        if self.variant not in PFF_VARIANTS:
            raise ValueError(f"pff.variant must be one of {PFF_VARIANTS}, got {self.variant!r}")
        if self.patch_loss not in PATCH_LOSSES:
            raise ValueError(
                f"pff.patch_loss must be one of {PATCH_LOSSES}, got {self.patch_loss!r}"
            )
        bad = set(self.levels) - set(LEVELS)
        if bad:
            raise ValueError(f"pff.levels must be a subset of {LEVELS}, got {sorted(bad)}")


@dataclass(frozen=True)
class LocalSpec:
    """Everything that defines a local-learning method (see ``PRESETS`` for each method).

    Levels: the *independent* level trains module i on its detached input with
    ``ind_head``; the *cascade* level trains modules i-1 and i together with ``cas_head``.
    ``w_ind`` / ``w_cas`` weight them (a zero weight switches the level off). ``dgl`` and
    ``infopro`` are the independent level alone; the ``*_hpff`` presets are HiLo + PFF.
    ``first_module``: which own losses module 0 (with the stem) gets; ``'cascade_only'`` (the
    reference) gives it none, it learns through cascade 1. ``last_module``: on which levels the
    net's real classifier trains the last module (the reference: ``'both'``).
    ``ixx_*``/``ixy_*``: InfoPro's lambda_1/lambda_2 at the first and last local module.
    ``schedule``: ``'one_forward'`` (ours) or ``'reference'`` (the reference's three paths).
    ``aux_pool``: the classifier heads' pool side (1: global, the reference; 2: a 2x2 grid).
    ``aux_net``: ``'<a>c<b>f'`` (CIFAR-style ``ClassifierAuxHead``) or ``'bottleneck'``
    (``BottleneckAuxHead``: 1x1 reduce, two stride-2 3x3 convs, 1x1 expand to ``feature_dim``)
    or, for token features (ViT), ``'token1f'``/``'token2f'`` (``TokenClassifierHead``:
    LayerNorm, mean over the grid tokens, 1 or 2 linear layers of width ``feature_dim``).
    ``decoder``: InfoPro's decoder, ``'interpolate'`` (``ReconstructionHead``: upsample the
    full feature, then convs, the first fused with the upsampling; CIFAR) or ``'progressive'`` (``ProgressiveReconstructionHead``:
    1x1 reduce to ``decoder_width``, then x2 upsampling stages; ImageNet) or ``'token'``
    (``TokenReconstructionHead``: ViT grid tokens laid out as their map, then the
    ``'interpolate'`` decoder).
    """

    method: str
    k: int = 16
    aux_net: str = "2c2f"
    aux_pool: int = 1
    local_loss: str = "cross_entropy"
    widen: float = 1.0
    feature_dim: int = 128
    temperature: float = 0.07
    ind_head: str = "classifier"
    cas_head: str = "classifier"
    w_ind: float = 1.0
    w_cas: float = 0.0
    first_module: str = "independent"
    last_module: str = "both"
    ixx_1: float = 5.0
    ixy_1: float = 0.5
    ixx_2: float = 0.0
    ixy_2: float = 0.0
    pff: PFFSpec | None = None
    schedule: str = "one_forward"
    decoder: str = "interpolate"
    decoder_width: int = 128
    levels: tuple[Level, ...] | None = None

    def __post_init__(self) -> None:
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(level_from(lv) for lv in self.levels))
            check_levels(self.levels)
        _check("method", self.method, tuple(PRESETS))
        _check("local_loss", self.local_loss, LOCAL_LOSSES)
        _check("ind_head", self.ind_head, HEAD_KINDS)
        _check("cas_head", self.cas_head, HEAD_KINDS)
        _check("first_module", self.first_module, FIRST_MODULE)
        _check("last_module", self.last_module, LAST_MODULE)
        _check("schedule", self.schedule, tuple(SCHEDULE_FUNCTIONS))
        _check("decoder", self.decoder, DECODERS)
        if self.aux_net not in NAMED_AUX_NETS and parse_token_aux_net(self.aux_net) is None:
            try:
                parse_aux_net(self.aux_net)
            except ValueError as err:
                raise ValueError(f"{err}, or one of {NAMED_AUX_NETS + TOKEN_AUX_NETS}") from None
        if self.aux_pool < 1:
            raise ValueError(f"aux_pool must be >= 1, got {self.aux_pool}")
        if self.aux_pool != 1 and (
            self.aux_net in NAMED_AUX_NETS or parse_token_aux_net(self.aux_net) is not None
        ):
            raise ValueError(f"aux_pool applies to '<a>c<b>f' heads, not aux_net={self.aux_net!r}")
        if self.decoder_width < 1:
            raise ValueError(f"decoder_width must be >= 1, got {self.decoder_width}")
        if self.k < 1:
            raise ValueError(f"model.method.k must be >= 1, got {self.k}")
        if self.method != "e2e" and self.levels is None and self.w_ind == 0 and self.w_cas == 0:
            raise ValueError("w_ind and w_cas are both 0: no module would receive a gradient")

    @property
    def is_e2e(self) -> bool:
        return self.method == "e2e" or self.k == 1

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.pff is not None:
            out["pff"] = {f.name: getattr(self.pff, f.name) for f in fields(self.pff)}
        if self.levels is not None:
            out["levels"] = [lv.to_dict() for lv in self.levels]
            for key in SHORTHAND_KEYS:  # they have no effect beside explicit levels
                out.pop(key, None)
        return out

    def resolved_levels(self) -> tuple[Level, ...]:
        """The levels this spec trains with: ``levels`` if given, else the shorthand's.

        Shorthand: level ``'ind'`` (span 1, weight ``w_ind``, head ``ind_head``) and level
        ``'cas'`` (span 2, ``w_cas``, ``cas_head``); ``first_module``/``last_module`` say which
        levels module 0 and the last module take part in; levels of weight 0 are dropped.
        """
        if self.levels is not None:
            return self.levels
        ind = Level(
            "ind",
            1,
            self.w_ind,
            self.head_config(self.ind_head, "independent"),
            first_module=self.first_module in ("independent", "both"),
            last_module=self.last_module in ("both", "independent"),
        )
        cas = Level(
            "cas",
            2,
            self.w_cas,
            self.head_config(self.cas_head, "cascade"),
            first_module=self.first_module == "both",
            last_module=self.last_module in ("both", "cascade"),
        )
        return tuple(lv for lv in (ind, cas) if lv.active)

    def head_config(self, kind: str, level: str) -> dict[str, Any]:
        """The registry config of a shorthand head (``'classifier'`` or ``'infopro'``) on
        ``level``, PFF-wrapped where ``pff`` applies to that level."""
        pff = self.pff if self.pff is not None and level in self.pff.levels else None
        pff = pff if pff is not None and pff.n > 1 else None
        paper = pff is not None and pff.variant == "paper"
        classifier = self._classifier_config()
        if paper:
            classifier = dict(type="PatchFusedClassifier", n=pff.n, head=classifier)
        if kind == "classifier":
            return classifier
        decoder = self._decoder_config()
        if pff is not None and pff.variant == "official":
            reconstruction = dict(type="OfficialPatchDecoder", n=pff.n, decoder=decoder)
        elif paper:
            reconstruction = dict(
                type="PatchwiseReconstruction", n=pff.n, patch_loss=pff.patch_loss, head=decoder
            )
        else:
            reconstruction = decoder
        return dict(
            type="InfoProHead",
            reconstruction=reconstruction,
            classifier=classifier,
            ixx_1=self.ixx_1,
            ixy_1=self.ixy_1,
            ixx_2=self.ixx_2,
            ixy_2=self.ixy_2,
        )

    def _classifier_config(self) -> dict[str, Any]:
        common = dict(loss=self.local_loss, widen=self.widen, temperature=self.temperature)
        if self.aux_net == "bottleneck":
            # feature_dim: the 1x1 expand width and, with loss='contrast', the embedding width.
            return dict(
                type="BottleneckAuxHead",
                expand=self.feature_dim,
                feature_dim=self.feature_dim,
                **common,
            )
        token_fcs = parse_token_aux_net(self.aux_net)
        if token_fcs is not None:
            return dict(
                type="TokenClassifierHead", fcs=token_fcs, feature_dim=self.feature_dim, **common
            )
        return dict(
            type="ClassifierAuxHead",
            config=self.aux_net,
            feature_dim=self.feature_dim,
            pool=self.aux_pool,
            **common,
        )

    def _decoder_config(self) -> dict[str, Any]:
        if self.decoder == "progressive":
            return dict(
                type="ProgressiveReconstructionHead", width=self.decoder_width, widen=self.widen
            )
        if self.decoder == "token":
            return dict(
                type="TokenReconstructionHead",
                head=dict(type="ReconstructionHead", widen=self.widen),
            )
        return dict(type="ReconstructionHead", widen=self.widen)


# The HPFF presets, held against the authors' code (docs/method.md, "Fidelity"): with the
# reference's heads (pff.variant='official') our one-forward schedule gives its gradients to
# float64 precision. With the paper's PFF (the default) the decoder loss is the *sum* over the
# n x n patches (patch_loss='sum'), which is the reference's effective reconstruction weight
# (it sums n*n decoders' BCE). BatchNorm running statistics move once per step here; the
# reference's repeated forwards move them once in the stem, twice in the first and last
# blocks and three times in the others.
_HPFF_COMMON: dict[str, Any] = dict(
    w_ind=0.001,
    w_cas=0.999,
    first_module="cascade_only",
    last_module="both",
    pff=PFFSpec(),
)
PRESETS: dict[str, dict[str, Any]] = {
    "e2e": dict(k=1, w_ind=1.0, w_cas=0.0),
    "dgl": dict(ind_head="classifier", w_ind=1.0, w_cas=0.0, first_module="independent"),
    "infopro": dict(ind_head="infopro", w_ind=1.0, w_cas=0.0, first_module="independent"),
    "dgl_hpff": dict(ind_head="classifier", cas_head="classifier", **_HPFF_COMMON),
    "infopro_hpff": dict(ind_head="classifier", cas_head="infopro", **_HPFF_COMMON),
}


#: the built-in methods (``PRESETS`` also holds those ``register_preset`` adds).
METHODS = tuple(PRESETS)
#: keys that only shape the default two levels (``LocalSpec.resolved_levels``).
SHORTHAND_KEYS = frozenset(
    {
        "aux_net", "aux_pool", "local_loss", "widen", "feature_dim", "temperature",
        "ind_head", "cas_head", "w_ind", "w_cas", "first_module", "last_module",
        "ixx_1", "ixy_1", "ixx_2", "ixy_2", "pff", "decoder", "decoder_width",
    }
)  # fmt: skip


def register_preset(name: str, values: dict[str, Any], force: bool = False) -> None:
    """A new method is a named dict of spec values (typically ``levels=[...]``): after
    ``register_preset('my_method', dict(levels=...))`` configs say ``method='my_method'``."""
    if name in PRESETS and not force:
        raise KeyError(f"method {name!r} is already a preset")
    refuse_unknown_keys("local-learning", values, {f.name for f in fields(LocalSpec)} - {"method"})
    previous = PRESETS.get(name)
    PRESETS[name] = dict(values)
    try:
        build_spec(dict(method=name))  # validate now, not when a job starts
    except Exception:
        if previous is None:
            del PRESETS[name]
        else:
            PRESETS[name] = previous
        raise


def _check(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _pff_from(value: Any) -> PFFSpec | None:
    if value is None or value is False:
        return None
    if isinstance(value, PFFSpec):
        return value
    if not isinstance(value, dict):
        raise TypeError(
            f"pff must be None or a dict like dict(n=2, variant='paper'), got {value!r}"
        )
    refuse_unknown_keys("pff", value, {f.name for f in fields(PFFSpec)})
    kwargs = dict(value)
    if "levels" in kwargs:
        levels = kwargs["levels"]
        kwargs["levels"] = (levels,) if isinstance(levels, str) else tuple(levels)
    return PFFSpec(**kwargs)


def build_spec(config: dict[str, Any] | LocalSpec) -> LocalSpec:
    """``dict(method='dgl_hpff', k=16, ...)`` -> ``LocalSpec`` (preset values, then overrides)."""
    if isinstance(config, LocalSpec):
        return config
    refuse_unknown_keys("local-learning", config, {f.name for f in fields(LocalSpec)})
    if "method" not in config:
        raise ValueError(f"the spec needs a 'method', one of {tuple(PRESETS)}")
    method = config["method"]
    _check("method", method, tuple(PRESETS))
    values = {**PRESETS[method], **config}
    if values.get("levels") is not None:
        # Explicit levels carry their own heads and weights: a shorthand key the user sets
        # beside them would be ignored, so it is refused.
        ignored = sorted(set(config) & SHORTHAND_KEYS)
        if ignored:
            raise ValueError(
                f"{ignored} are shorthand for the default levels and have no effect when the "
                f"method has explicit levels (method={method!r}); set them inside the levels"
            )
    if "pff" in values:
        values["pff"] = _pff_from(values["pff"])
    return LocalSpec(**values)


def with_overrides(spec: LocalSpec, **changes: Any) -> LocalSpec:
    """A copy of ``spec`` with some fields changed (``pff`` may be a dict)."""
    if "pff" in changes:
        changes["pff"] = _pff_from(changes["pff"])
    return replace(spec, **changes)


__all__ = [
    "LocalSpec",
    "PFFSpec",
    "PRESETS",
    "METHODS",
    "build_spec",
    "register_preset",
    "with_overrides",
]
