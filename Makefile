# Two commands do everything: `make train` and `make test`. Both bootstrap what is missing:
# Debian packages, a .venv keyed on a hash of the pinned requirements, the package (editable).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export DS_BUILD_OPS := 0
export PYTHONHASHSEED := 0

.PHONY: train train-seg test compare benchmark lint deps venv clean-venv

# tools/bootstrap.sh: missing Debian packages (requirements-debian.txt), then the venv, keyed
# on a hash of the pinned requirements (a second run installs nothing).
deps:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash tools/bootstrap.sh debian

venv:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash tools/bootstrap.sh all

MAIN_CONFIG := configs/fashion_mnist/resnet32_k16_dgl_hpff.py
FMNIST_METHODS := e2e k16_dgl k16_infopro k16_dgl_hpff k16_infopro_hpff

train: venv
	$(PY) tools/train.py $(MAIN_CONFIG) --work-dir work_dirs/make_train

# DeepLabV3-R18-D8, InfoPro+HPFF K=4, on canvases of real Fashion-MNIST garments (the
# segmentation job that runs here: no Cityscapes on this machine). The test-set table lists the
# IoU and accuracy of every class; predictions.png shows image | ground truth | prediction.
SEG_CONFIG := configs/fashion_mnist_seg/deeplabv3_r18_d8_k4_infopro_hpff.py
train-seg: venv
	$(PY) tools/train.py $(SEG_CONFIG) --work-dir work_dirs/make_train_seg
	@echo "predictions (image | ground truth | prediction): work_dirs/make_train_seg/predictions.png"

compare: venv
	$(PY) tools/compare.py $(foreach m,$(FMNIST_METHODS),configs/fashion_mnist/resnet32_$(m).py) \
	  --work-root work_dirs/compare --cfg-options train_dataloader.dataset.subset=20000 \
	  train_cfg.max_epochs=1 param_scheduler.1.end=1 param_scheduler.1.T_max=1 \
	  model.method.aux_net=0c2f model.method.aux_pool=1

test: venv
	$(PY) -m pytest -q tests

# Step time and activation memory of the CIFAR ResNet-32 K=16 methods (docs/benchmarks.md).
C10 := configs/cifar10
benchmark: venv
	$(PY) tools/benchmark.py $(C10)/resnet32_e2e.py $(C10)/resnet32_k16_dgl.py \
	  $(C10)/resnet32_k16_infopro.py $(C10)/resnet32_k16_dgl_hpff.py \
	  $(C10)/resnet32_k16_infopro_hpff.py \
	  "$(C10)/resnet32_k16_infopro_hpff.py+model.method.schedule=reference" \
	  --batch-size 128 --out work_dirs/benchmark/bench.json

lint: venv
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
