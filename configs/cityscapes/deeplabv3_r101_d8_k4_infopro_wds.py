# configs/cityscapes/deeplabv3_r101_d8_k4_infopro.py read from webdataset shards (CITYSCAPES_SHARDS,
# made by `tools/make_shards.py ROOT OUT --layout cityscapes`): the same model, 40k schedule
# and mmseg pipeline; only where the samples come from differs (docs/data.md).
#   CITYSCAPES_SHARDS=/data/cityscapes-wds CONFIG=configs/cityscapes/deeplabv3_r101_d8_k4_infopro_wds.py \
#       sbatch slurm/cityscapes_deeplabv3_r101.sh
_base_ = [
    "../_base_/models/deeplabv3_r101_d8.py",
    "../_base_/datasets/cityscapes_webdataset.py",
    "../_base_/schedules/seg_40k.py",
]
model = dict(method=dict(_delete_=True, method="infopro", k=4))
