"""Split plans: which residual blocks form each local module.

A plan is data (block indices per module) checked once when built, so every schedule can trust
it. The published split points of the HPFF/InfoPro reference code are kept verbatim as tables of
the last block ``(stage, index)`` of every module; any other K gets a balanced split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BlockId = tuple[int, int]

# Reference split tables, ``{arch: {K: [last block of each module, ...]}}``, stages 1-based,
# block indices 0-based within a stage. The stem is always part of the first module.
#
# Quirk kept on purpose: InfoPro's convention counts the stem as a module, so ResNet-32 K=16 and
# ResNet-110 K=55 list K-1 block modules (one block each; the stem joins the first). The
# ResNet-110 K=16 and K=32 tables, however, list K block modules, and all K <= 8 tables list K.
# We follow the tables as published: ``SplitPlan.k`` keeps the nominal K (InfoPro's lambda
# schedule uses it) and ``SplitPlan.num_modules`` is the actual count.
SPLIT_TABLES: dict[str, dict[int, list[BlockId]]] = {
    "resnet32": {
        1: [(3, 4)],
        2: [(2, 1), (3, 4)],
        3: [(1, 4), (2, 4), (3, 4)],
        4: [(1, 2), (2, 1), (3, 0), (3, 4)],
        8: [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2), (3, 4)],
        16: [
            (1, 0),
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (2, 0),
            (2, 1),
            (2, 2),
            (2, 3),
            (2, 4),
            (3, 0),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
        ],
    },
    "resnet110": {
        1: [(3, 17)],
        2: [(2, 8), (3, 17)],
        3: [(1, 17), (2, 17), (3, 17)],
        4: [(1, 11), (2, 7), (3, 3), (3, 17)],
        8: [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10), (3, 17)],
        16: [
            (1, 1),
            (1, 4),
            (1, 7),
            (1, 10),
            (1, 13),
            (1, 16),
            (2, 1),
            (2, 4),
            (2, 7),
            (2, 11),
            (2, 15),
            (3, 1),
            (3, 5),
            (3, 9),
            (3, 13),
            (3, 17),
        ],
        32: [
            (1, 1),
            (1, 2),
            (1, 4),
            (1, 5),
            (1, 7),
            (1, 9),
            (1, 11),
            (1, 13),
            (1, 14),
            (1, 16),
            (1, 17),
            (2, 1),
            (2, 2),
            (2, 4),
            (2, 5),
            (2, 7),
            (2, 9),
            (2, 11),
            (2, 13),
            (2, 14),
            (2, 16),
            (2, 17),
            (3, 1),
            (3, 3),
            (3, 4),
            (3, 6),
            (3, 7),
            (3, 9),
            (3, 11),
            (3, 13),
            (3, 15),
            (3, 17),
        ],
        55: [(s, i) for s in (1, 2, 3) for i in range(18)],
    },
}
# ImageNet nets: ResNet-152 reuses ResNet-101's table in the reference (valid, as its last
# entry is still the final block, but its third stage is then split unevenly).
_IMAGENET_TABLE: dict[int, list[BlockId]] = {
    1: [(4, 2)],
    4: [(3, 0), (3, 9), (3, 17), (4, 2)],
    8: [(2, 0), (3, 1), (3, 5), (3, 9), (3, 13), (3, 17), (3, 21), (4, 2)],
}
for _arch in ("resnet101", "resnet152", "resnext101_32x8d"):
    SPLIT_TABLES[_arch] = {k: list(v) for k, v in _IMAGENET_TABLE.items()}


@dataclass(frozen=True)
class SplitPlan:
    """Blocks of every local module, as indices into the network's ``blocks`` list.

    ``k`` is the nominal K the plan was requested with (used by InfoPro's lambda schedule),
    ``modules[m]`` the block indices of module ``m`` (module 0 also owns the stem), ``source``
    says where it came from (``"table:<arch>"`` or ``"balanced"``).
    """

    k: int
    modules: tuple[tuple[int, ...], ...]
    block_ids: tuple[BlockId, ...]
    source: str = "balanced"

    def __post_init__(self) -> None:
        flat = [b for mod in self.modules for b in mod]
        if not self.modules or any(len(mod) == 0 for mod in self.modules):
            raise ValueError(f"every local module needs at least one block, got {self.modules}")
        if flat != list(range(len(self.block_ids))):
            raise ValueError(
                "a split plan must cover every block exactly once, in order: "
                f"got {self.modules} for {len(self.block_ids)} blocks"
            )

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    @property
    def last_block_ids(self) -> list[BlockId]:
        """The table form: last block (stage, index) of every module."""
        return [self.block_ids[mod[-1]] for mod in self.modules]

    @classmethod
    def from_last_blocks(
        cls, k: int, last_blocks: Sequence[BlockId], block_ids: Sequence[BlockId], source: str
    ) -> SplitPlan:
        """Build from a table row (last block of every module, the final block included)."""
        ids = [tuple(b) for b in block_ids]
        position = {b: i for i, b in enumerate(ids)}
        ends: list[int] = []
        for b in last_blocks:
            b = tuple(b)
            if b not in position:
                raise ValueError(f"{source} K={k}: block {list(b)} does not exist in this network")
            ends.append(position[b])
        if any(e2 <= e1 for e1, e2 in zip(ends, ends[1:])):
            raise ValueError(f"{source} K={k}: split points {last_blocks} are not in block order")
        if ends[-1] != len(ids) - 1:
            raise ValueError(
                f"{source} K={k}: the last module must end at the final block {list(ids[-1])}, "
                f"the table ends at {list(last_blocks[-1])}"
            )
        starts = [0] + [e + 1 for e in ends[:-1]]
        modules = tuple(tuple(range(s, e + 1)) for s, e in zip(starts, ends))
        return cls(k=k, modules=modules, block_ids=tuple(ids), source=source)


def _tables_summary() -> str:
    return "; ".join(f"{a}: K={sorted(t)}" for a, t in SPLIT_TABLES.items())


def _impossible_k(k: int, n_blocks: int, arch: str | None) -> ValueError:
    """The error for a K no table and no balanced split gives, with the K that work.

    K counts local modules. A balanced split needs at least one block per module, so
    1 <= K <= the number of blocks; a published table may add one more K (ResNet-32's K=16
    counts the stem as a module: its 15 block modules take one block each)."""
    extra = [t for t in sorted(SPLIT_TABLES.get(arch or "", {})) if t > n_blocks]
    also = f"; the published table of {arch} also gives K={extra}" if extra else ""
    where = f"model.arch={arch!r}" if arch else "model.arch=None: no published table"
    return ValueError(
        f"model.method.k={k} is impossible for a network with {n_blocks} blocks ({where}): "
        f"K counts local modules, so a balanced split needs 1 <= K <= {n_blocks} (at least "
        f"one block each){also}. Set model.method.k to one of those. Published tables: "
        f"{_tables_summary()}"
    )


def balanced_split(k: int, block_ids: Sequence[BlockId]) -> SplitPlan:
    """K modules whose block counts differ by at most one.

    The extra blocks go to the last modules: module 0 already carries the stem.
    """
    n = len(block_ids)
    if not 1 <= k <= n:
        raise _impossible_k(k, n, None)
    base, extra = divmod(n, k)
    sizes = [base + (1 if m >= k - extra else 0) for m in range(k)]
    modules, start = [], 0
    for size in sizes:
        modules.append(tuple(range(start, start + size)))
        start += size
    return SplitPlan(k=k, modules=tuple(modules), block_ids=tuple(map(tuple, block_ids)))


def build_split_plan(arch: str | None, k: int, block_ids: Sequence[BlockId]) -> SplitPlan:
    """The published table for (arch, K) when one exists, else a balanced split of K modules.
    An impossible K is refused naming ``model.method.k`` and the K that would work."""
    table = SPLIT_TABLES.get(arch or "", {})
    if k in table:
        try:
            return SplitPlan.from_last_blocks(k, table[k], block_ids, source=f"table:{arch}")
        except ValueError as err:
            raise ValueError(
                f"{err}: the split table of model.arch={arch!r} does not fit this backbone; "
                "set model.arch to the backbone's table, or to None for a balanced split"
            ) from None
    if not 1 <= k <= len(block_ids):
        raise _impossible_k(k, len(block_ids), arch)
    return balanced_split(k, block_ids)
