"""DeepLabV3 segmentation with HPFF local heads (built through mmsegmentation's registry).

Empty until the segmentation issue; the mmsegmentation import path already works on mmcv-lite
(see ``hpff_dist.compat.provide_mmcv_ops_without_compiled_extension``).
"""
