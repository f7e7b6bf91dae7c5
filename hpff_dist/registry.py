"""Child registries of mmengine's roots under the scope ``hpff_dist``.

Configs say ``type='CifarResNet'`` and the lookup walks from here up to mmengine's roots, so
mmengine's own components (optimizers, schedulers, hooks, loops) stay reachable. ``locations``
lets mmengine import the module that registers a name the first time it is asked for. The
DeepSpeed wrappers and strategy are listed there too: importing them does not import DeepSpeed
(``hpff_dist.engine.mmengine_runner``), so a single-process run building its optim wrapper
stays light.
"""

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

SCOPE = "hpff_dist"

MODELS = Registry("model", parent=MMENGINE_MODELS, scope=SCOPE, locations=["hpff_dist.models"])
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, scope=SCOPE, locations=["hpff_dist.data"])
TRANSFORMS = Registry(
    "transform", parent=MMENGINE_TRANSFORMS, scope=SCOPE, locations=["hpff_dist.data"]
)
DATA_SAMPLERS = Registry(
    "data sampler", parent=MMENGINE_DATA_SAMPLERS, scope=SCOPE, locations=["hpff_dist.data"]
)
METRICS = Registry("metric", parent=MMENGINE_METRICS, scope=SCOPE, locations=["hpff_dist.engine"])
EVALUATOR = Registry(
    "evaluator", parent=MMENGINE_EVALUATOR, scope=SCOPE, locations=["hpff_dist.engine"]
)
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, scope=SCOPE, locations=["hpff_dist.engine"])
LOOPS = Registry("loop", parent=MMENGINE_LOOPS, scope=SCOPE, locations=["hpff_dist.engine"])
OPTIM_WRAPPERS = Registry(
    "optim wrapper",
    parent=MMENGINE_OPTIM_WRAPPERS,
    scope=SCOPE,
    locations=["hpff_dist.engine", "hpff_dist.engine.deepspeed.wrappers"],
)
MODEL_WRAPPERS = Registry(
    "model wrapper",
    parent=MMENGINE_MODEL_WRAPPERS,
    scope=SCOPE,
    locations=[
        "hpff_dist.engine",
        "hpff_dist.engine.deepspeed.wrappers",
        "hpff_dist.engine.pipeline.wrappers",
    ],
)
STRATEGIES = Registry(
    "strategy",
    parent=MMENGINE_STRATEGIES,
    scope=SCOPE,
    locations=[
        "hpff_dist.engine",
        "hpff_dist.engine.deepspeed.strategy",
        "hpff_dist.engine.pipeline.strategy",
    ],
)
RUNNERS = Registry("runner", parent=MMENGINE_RUNNERS, scope=SCOPE, locations=["hpff_dist.engine"])

# Children with nothing of ours (yet): they exist so lookups under our scope find mmengine's
# optimizers, schedulers, collate functions ... without a scope-fallback warning per build.
OPTIMIZERS = Registry("optimizer", parent=MMENGINE_OPTIMIZERS, scope=SCOPE)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    "optimizer wrapper constructor", parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope=SCOPE
)
PARAM_SCHEDULERS = Registry("parameter scheduler", parent=MMENGINE_PARAM_SCHEDULERS, scope=SCOPE)
FUNCTIONS = Registry("function", parent=MMENGINE_FUNCTIONS, scope=SCOPE)
LOG_PROCESSORS = Registry("log_processor", parent=MMENGINE_LOG_PROCESSORS, scope=SCOPE)
VISUALIZERS = Registry("visualizer", parent=MMENGINE_VISUALIZERS, scope=SCOPE)
VISBACKENDS = Registry("vis_backend", parent=MMENGINE_VISBACKENDS, scope=SCOPE)
WEIGHT_INITIALIZERS = Registry(
    "weight initializer", parent=MMENGINE_WEIGHT_INITIALIZERS, scope=SCOPE
)
