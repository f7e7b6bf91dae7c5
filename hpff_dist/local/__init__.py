"""The local-learning core (DGL, InfoPro, HiLo, PFF): pure torch, no data or engine code.

Entry points: ``build_local_learner`` (net + spec dict -> ``LocalLearner``), ``build_spec``,
``build_split_plan``, the head registry ``HEADS``, ``register_preset``, the schedules,
``SavedTensorMeter``, and the pipeline of local modules (``pipeline_stage_step`` over
``torch.distributed`` point-to-point messages; which ranks talk is the caller's ``StageLink``).
"""

from hpff_dist.local.backward import Backward, PlainBackward, ScaledBackward
from hpff_dist.local.dense import seg_cross_entropy
from hpff_dist.local.dense_heads import (
    DenseHeadBase,
    DGLSegHead,
    InfoProSegHead,
    SegClassifierHead,
    dense_levels,
)
from hpff_dist.local.dense_pff import DensePatchwiseReconstruction, PatchFusedDense
from hpff_dist.local.features import FeatureInfo, split_patches
from hpff_dist.local.heads import (
    ClassifierAuxHead,
    ClassifierHeadBase,
    HeadOutput,
    InfoProHead,
    LocalHead,
    NetHead,
    ReconstructionHead,
    TaskLoss,
    aux_conv_width,
    lambda_schedule,
)
from hpff_dist.local.imagenet_heads import BottleneckAuxHead, ProgressiveReconstructionHead
from hpff_dist.local.learner import LocalLearner, build_local_learner
from hpff_dist.local.levels import Level
from hpff_dist.local.losses import supervised_contrastive_loss
from hpff_dist.local.memory import SavedTensorMeter, aux_peak_saved_bytes, memory_region
from hpff_dist.local.module import BlockTap, LocalModule, ModuleLevel, ModuleTap
from hpff_dist.local.network import BlockNetwork, block_id_table
from hpff_dist.local.pff import OfficialPatchDecoder, PatchFusedClassifier, PatchwiseReconstruction
from hpff_dist.local.pipeline import (
    MicroBatch,
    PipelineStage,
    StageLink,
    balanced_stages,
    micro_batches,
    module_costs,
    pipeline_forward,
    pipeline_stage_step,
)
from hpff_dist.local.registry import HEADS, HeadContext, Registry
from hpff_dist.local.schedule import StepOutput, e2e_step, one_forward_step, reference_step
from hpff_dist.local.spec import METHODS, PRESETS, LocalSpec, PFFSpec, build_spec, register_preset
from hpff_dist.local.split import SPLIT_TABLES, SplitPlan, balanced_split, build_split_plan
from hpff_dist.local.token_heads import TokenClassifierHead, TokenReconstructionHead

__all__ = [
    "FeatureInfo",
    "HEADS",
    "HeadContext",
    "Level",
    "ModuleLevel",
    "Registry",
    "TaskLoss",
    "register_preset",
    "Backward",
    "PlainBackward",
    "ScaledBackward",
    "ClassifierAuxHead",
    "ClassifierHeadBase",
    "HeadOutput",
    "InfoProHead",
    "LocalHead",
    "NetHead",
    "ReconstructionHead",
    "aux_conv_width",
    "lambda_schedule",
    "BottleneckAuxHead",
    "ProgressiveReconstructionHead",
    "LocalLearner",
    "build_local_learner",
    "supervised_contrastive_loss",
    "SavedTensorMeter",
    "aux_peak_saved_bytes",
    "memory_region",
    "LocalModule",
    "BlockTap",
    "ModuleTap",
    "BlockNetwork",
    "block_id_table",
    "DenseHeadBase",
    "DGLSegHead",
    "InfoProSegHead",
    "SegClassifierHead",
    "dense_levels",
    "seg_cross_entropy",
    "DensePatchwiseReconstruction",
    "PatchFusedDense",
    "OfficialPatchDecoder",
    "PatchFusedClassifier",
    "PatchwiseReconstruction",
    "split_patches",
    "MicroBatch",
    "PipelineStage",
    "StageLink",
    "balanced_stages",
    "micro_batches",
    "module_costs",
    "pipeline_forward",
    "pipeline_stage_step",
    "StepOutput",
    "e2e_step",
    "one_forward_step",
    "reference_step",
    "METHODS",
    "PRESETS",
    "LocalSpec",
    "PFFSpec",
    "build_spec",
    "SPLIT_TABLES",
    "SplitPlan",
    "balanced_split",
    "build_split_plan",
    "TokenClassifierHead",
    "TokenReconstructionHead",
]
