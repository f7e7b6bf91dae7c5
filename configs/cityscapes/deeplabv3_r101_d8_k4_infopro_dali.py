# deeplabv3_r101_d8_k4_infopro.py, fed by DALI from webdataset shards (CITYSCAPES_SHARDS):
# the dali e2e config's model, data and 40k schedule; only the training method differs.
#   CITYSCAPES_SHARDS=/data/cityscapes-wds CONFIG=configs/cityscapes/deeplabv3_r101_d8_k4_infopro_dali.py sbatch slurm/cityscapes_deeplabv3_r101.sh
_base_ = ["./deeplabv3_r101_d8_e2e_dali.py"]
model = dict(method=dict(_delete_=True, method="infopro", k=4))
