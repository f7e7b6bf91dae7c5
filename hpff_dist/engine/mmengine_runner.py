"""mmengine's runner and DeepSpeed strategy classes, imported without importing DeepSpeed.

``import mmengine.runner`` imports ``mmengine._strategy.deepspeed``, which imports DeepSpeed
(seconds, an accelerator probe and its warnings) in every process, a single-process run
included. Every module of ours that needs those classes imports them from here, after
:func:`hpff_dist.compat.defer_deepspeed_import_in_mmengine`: DeepSpeed is then imported when a
DeepSpeed strategy is built, not before. When something imported ``mmengine.runner`` earlier,
the classes are the same and DeepSpeed is simply already there.
"""

from hpff_dist.compat import defer_deepspeed_import_in_mmengine

defer_deepspeed_import_in_mmengine()

from mmengine._strategy.deepspeed import (  # noqa: E402
    DeepSpeedOptimWrapper,
    DeepSpeedStrategy,
    MMDeepSpeedEngineWrapper,
)
from mmengine.runner import (  # noqa: E402
    EpochBasedTrainLoop,
    FlexibleRunner,
    Runner,
    TestLoop,
    ValLoop,
)

__all__ = [
    "DeepSpeedOptimWrapper",
    "DeepSpeedStrategy",
    "EpochBasedTrainLoop",
    "FlexibleRunner",
    "MMDeepSpeedEngineWrapper",
    "Runner",
    "TestLoop",
    "ValLoop",
]
