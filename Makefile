# The two commands of the contract: `make serve` and `make test`.
# Both create .venv when it is missing. ORT picks the ONNX Runtime extra:
# `make serve ORT=gpu` installs onnxruntime-gpu instead of onnxruntime.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ORT    ?= cpu
MODELS ?= models
ARGS   ?=

# onnxruntime and onnxruntime-gpu both provide the `onnxruntime` module: the
# one not chosen is removed before the chosen one is installed.
OTHER_ORT   := $(if $(filter gpu,$(ORT)),onnxruntime,onnxruntime-gpu)
SERVE_STAMP := $(VENV)/.installed-serve-$(ORT)
ALL_STAMP   := $(VENV)/.installed-all-$(ORT)

.PHONY: serve test models protos lint install install-dev clean-venv gpu-wheels

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Serving install: no torch.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip uninstall -y -q $(OTHER_ORT) 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[$(ORT)]'
	touch $@

# Everything: training (torch==2.13.0, CPU wheel) and the test tools.
$(ALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip uninstall -y -q $(OTHER_ORT) 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[$(ORT),train,dev]'
	touch $@ $(SERVE_STAMP)

install: $(SERVE_STAMP)
install-dev: $(ALL_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/python -m dlserve.ensure_models $(MODELS)
	exec $(BIN)/dlserve serve --model-repository $(MODELS) $(ARGS)

test: $(ALL_STAMP)
	$(BIN)/python -m pytest $(ARGS)

# Retrain the five default models into models/ (needs the train extra).
models: $(ALL_STAMP)
	$(BIN)/python -m dlserve train --all-presets --repository $(MODELS) --fresh

# Regenerate serving/_generated from protos/ (a test fails when it is stale).
protos: $(ALL_STAMP)
	$(BIN)/python scripts/gen_protos.py

lint: $(ALL_STAMP)
	$(BIN)/python -m pytest tests/test_lint.py

clean-venv:
	rm -rf $(VENV)

# Wheels for scripts/gpu_check.sh on an offline GPU machine (CUDA 13 driver,
# CPython 3.12): onnxruntime-gpu with its CUDA 13 / cuDNN 9 wheels (a driver
# alone has no libcudart or cuDNN), the serving deps and onnx, cp312 manylinux.
GPU_PLATFORMS := manylinux2010_x86_64 manylinux_2_12_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
GPU_ORT := 'onnxruntime-gpu[cuda,cudnn]==1.31.1'
gpu-wheels: | $(BIN)/python
	$(BIN)/python -m pip download -q -d .whl --only-binary=:all: \
	    --implementation cp --python-version 3.12 --abi cp312 --abi abi3 --abi none \
	    $(addprefix --platform ,$(GPU_PLATFORMS)) --platform any \
	    -r requirements/serve-gpu.txt $(GPU_ORT) onnx
