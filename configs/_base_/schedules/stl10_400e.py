# Paper schedule for STL-10: 400 epochs at batch 128, lr 0.1, SGD Nesterov, wd 1e-4, cosine.
_base_ = ["./cifar_400e.py"]
optim_wrapper = dict(optimizer=dict(lr=0.1))
auto_scale_lr = dict(base_batch_size=128, enable=False)
