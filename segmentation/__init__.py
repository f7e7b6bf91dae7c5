"""DeepLabV3 segmentation with HPFF local heads, built through mmsegmentation's registry.

``LocalEncoderDecoder`` is mmseg's ``EncoderDecoder`` (backbone, decode head, auxiliary head,
whole/slide inference, post-processing: all mmseg's) whose training step is the local-learning
step of ``hpff_dist.models.local_step`` over the backbone's residual blocks. Configs load this
package with ``custom_imports = dict(imports=["segmentation"])``.

Importing it provides mmcv's ``ops`` module first where only mmcv-lite is installed
(``hpff_dist.compat.provide_mmcv_ops_without_compiled_extension``): mmseg imports it at load;
and it defers DeepSpeed's import, which mmseg would trigger through mmengine's runner
(``defer_deepspeed_import_in_mmengine``).
"""

from hpff_dist import compat

compat.provide_mmcv_ops_without_compiled_extension()
compat.defer_deepspeed_import_in_mmengine()  # mmseg imports mmengine's runner

# Registers LocalEncoderDecoder, LocalSegDataPreProcessor, PerClassIoUMetric, SegTTAAverage,
# TTATestLoop and the picture hook.
from segmentation import data_preprocessor, evaluation, segmentor, tta  # noqa: E402,F401
from segmentation.resnet_blocks import MMSegResNetBlocks  # noqa: E402
from segmentation.segmentor import LocalEncoderDecoder  # noqa: E402

__all__ = ["LocalEncoderDecoder", "MMSegResNetBlocks"]
