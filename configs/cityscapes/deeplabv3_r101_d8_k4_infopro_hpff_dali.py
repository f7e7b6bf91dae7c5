# configs/cityscapes/deeplabv3_r101_d8_k4_infopro_hpff.py fed by DALI from webdataset shards
# (CITYSCAPES_SHARDS, made by `tools/make_shards.py ROOT OUT --layout cityscapes`): the same
# model and 40k schedule; PNG decoding on the GPU and the mmseg transforms in a DALI graph
# (configs/_base_/datasets/cityscapes_dali.py says where it differs from mmseg's; docs/data.md).
#   CITYSCAPES_SHARDS=/data/cityscapes-wds CONFIG=configs/cityscapes/deeplabv3_r101_d8_k4_infopro_hpff_dali.py \
#       sbatch slurm/cityscapes_deeplabv3_r101.sh
_base_ = [
    "../_base_/models/deeplabv3_r101_d8.py",
    "../_base_/datasets/cityscapes_dali.py",
    "../_base_/schedules/seg_40k.py",
]
model = dict(method=dict(_delete_=True, method="infopro_hpff", k=4))
