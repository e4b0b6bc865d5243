# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= artifacts

.PHONY: install demo test kernels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs segdeploy with its compiled kernels and every extra (torch is pinned in pyproject.toml).
install: $(BIN)/python
	$(BIN)/pip install -q ".[export,ort,plot,rtx,serve,dev]"

demo: install
	$(BIN)/segdeploy export --model deeplabv3plus --input-size 512 512 --output $(OUT)/deeplabv3plus
	$(BIN)/segdeploy bench $(OUT)/deeplabv3plus --backends torch,ort --input-size 512 512 --warmup auto --plots $(OUT)/plots -o $(OUT)/bench.json

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -ra

# Developer loop: rebuild only the C++/CUDA library into segdeploy/_lib (for source-tree runs).
kernels:
	cmake -S . -B build/dev -DCMAKE_BUILD_TYPE=Release
	cmake --build build/dev -j
	mkdir -p segdeploy/_lib && cp build/dev/kernels/libsegdeploy_kernels.so segdeploy/_lib/

clean:
	rm -rf build dist $(OUT) segdeploy/_lib
