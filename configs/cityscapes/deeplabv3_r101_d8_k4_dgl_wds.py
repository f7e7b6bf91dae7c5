# deeplabv3_r101_d8_k4_dgl.py, read from webdataset shards (CITYSCAPES_SHARDS):
# the wds e2e config's model, data and 40k schedule; only the training method differs.
#   CITYSCAPES_SHARDS=/data/cityscapes-wds CONFIG=configs/cityscapes/deeplabv3_r101_d8_k4_dgl_wds.py sbatch slurm/cityscapes_deeplabv3_r101.sh
_base_ = ["./deeplabv3_r101_d8_e2e_wds.py"]
model = dict(method=dict(_delete_=True, method="dgl", k=4))
