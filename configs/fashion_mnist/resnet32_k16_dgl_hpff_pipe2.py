# ResNet-32 DGL+HPFF K=16 on Fashion-MNIST as a pipeline of 2 stages: the 16 local modules
# split between 2 processes (balanced by measured cost), each batch cut into 4 micro-batches;
# stage 1 trains micro-batch m while stage 0 trains m+1. The same parameters as the
# single-process run on those micro-batches (docs/distributed.md, "Pipeline of local modules").
#   torchrun --nproc_per_node 2 tools/train.py configs/fashion_mnist/resnet32_k16_dgl_hpff_pipe2.py --launcher pytorch
# 4 processes: 2 stages x 2 data-parallel replicas (DeepSpeed over each stage's replicas).
_base_ = ["./resnet32_k16_dgl_hpff.py"]
strategy = dict(pipeline=dict(stages=2, micro_batches=4))
