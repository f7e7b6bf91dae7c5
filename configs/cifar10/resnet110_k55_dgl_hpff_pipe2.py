# ResNet-110 DGL+HPFF K=55 on CIFAR-10 as a pipeline of 2 stages (55 local modules split
# between 2 processes by measured cost), 8 micro-batches per batch, ZeRO-1 over each stage's
# data-parallel replicas when there are more than 2 processes (docs/distributed.md).
#   torchrun --nproc_per_node 2 tools/train.py configs/cifar10/resnet110_k55_dgl_hpff_pipe2.py --launcher pytorch
_base_ = ["./resnet110_k55_dgl_hpff.py"]
strategy = dict(pipeline=dict(stages=2, micro_batches=8), zero_optimization=dict(stage=1))
