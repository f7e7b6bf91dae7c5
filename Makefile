# Two commands do everything: `make train` and `make test`. Both bootstrap what is missing:
# Debian packages, a .venv keyed on a hash of the pinned requirements, the package (editable).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := dataset-fashion-mnist
REQ_HASH := $(shell cat requirements.txt requirements.lock | sha256sum | cut -c1-16)
PKG_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PKG_STAMP := $(VENV)/.package-$(PKG_HASH)
export DS_BUILD_OPS := 0
export PYTHONHASHSEED := 0

.PHONY: train test compare benchmark lint deps venv clean-venv

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): requirements.txt requirements.lock
	@echo "building $(VENV) for requirements hash $(REQ_HASH)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	# torch first: deepspeed's setup imports it, and pip must take the wheels on local disk.
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -r requirements.lock -r requirements.txt
	touch $(STAMP)

# The editable install is cheap: redo it when pyproject changes, without rebuilding the venv.
$(PKG_STAMP): $(STAMP) pyproject.toml
	rm -f $(VENV)/.package-*
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $(PKG_STAMP)

venv: deps $(STAMP) $(PKG_STAMP)

MAIN_CONFIG := configs/fashion_mnist/resnet32_k16_dgl_hpff.py
FMNIST_METHODS := e2e k16_dgl k16_infopro k16_dgl_hpff k16_infopro_hpff

train: venv
	$(PY) tools/train.py $(MAIN_CONFIG) --work-dir work_dirs/make_train

compare: venv
	$(PY) tools/compare.py $(foreach m,$(FMNIST_METHODS),configs/fashion_mnist/resnet32_$(m).py) \
	  --work-root work_dirs/compare --cfg-options train_dataloader.dataset.subset=20000 \
	  train_cfg.max_epochs=1 param_scheduler.1.end=1 param_scheduler.1.T_max=1 \
	  model.method.aux_net=0c2f

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
