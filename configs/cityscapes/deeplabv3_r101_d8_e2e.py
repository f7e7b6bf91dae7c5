# DeepLabV3-R101-D8 on Cityscapes, end-to-end: mmseg's deeplabv3_r101-d8_4xb2-40k_cityscapes-
# 512x1024 (crop 512x1024, 4 GPUs x 2 images, 40k iterations). Paper (supp. Table 4):
# 79.12 / 79.81 / 80.02 mIoU single-scale / multi-scale / multi-scale + flip.
#   sbatch slurm/cityscapes_deeplabv3_r101.sh configs/cityscapes/deeplabv3_r101_d8_e2e.py
_base_ = [
    "../_base_/models/deeplabv3_r101_d8.py",
    "../_base_/datasets/cityscapes_folder.py",
    "../_base_/schedules/seg_40k.py",  # with the iteration-based runtime
]
