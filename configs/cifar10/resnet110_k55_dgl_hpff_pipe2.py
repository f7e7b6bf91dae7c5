# ResNet-110 DGL+HPFF K=55 on CIFAR-10 as a pipeline of 2 stages (the 54 local modules of the
# paper's table split between 2 processes by measured cost), 8 micro-batches per batch. With
# more than 2 processes the replicas of each stage reduce through DeepSpeed; ZeRO-0 (the
# default) lets stage 0 run on into the next batch, ZeRO-1/2 make the stages meet once per
# step for the gradient norm (docs/distributed.md, "Pipeline of local modules").
#   torchrun --nproc_per_node 2 tools/train.py configs/cifar10/resnet110_k55_dgl_hpff_pipe2.py --launcher pytorch
_base_ = ["./resnet110_k55_dgl_hpff.py"]
strategy = dict(pipeline=dict(stages=2, micro_batches=8))
