# SEN12MS toolbox. `make test` and `make demo` need nothing but Python 3.10+ and the package registry.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= s3,dali,dev
DATA ?= /sen12ms
OUT ?= out/
DEMO ?= demo
TEST_ARGS ?= -n 2
S3_DIR ?=

.PHONY: install test test-fast demo shards s3-local bench clean help

help:
	@echo "make install        create .venv with every pinned dependency"
	@echo "make test           install, then run the whole test suite"
	@echo "make test-fast      the unit tests only (pytest -m 'not slow'), about a minute and a half"
	@echo "make demo           sample dataset -> labels, splits -> shards -> short training + evaluation"
	@echo "make shards DATA=/sen12ms [OUT=out/]   convert a SEN12MS tree (train, val, test shards)"
	@echo "make s3-local [S3_DIR=store/]   a local S3 store (SeaweedFS), prints the AWS variables; Ctrl-C stops it"
	@echo "make bench          loader / codec / training figures into docs/benchmarks.md"

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: install
	$(PY) -m pytest $(TEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(TEST_ARGS)

demo: install
	rm -rf $(DEMO)
	$(PY) -m convert synth --out $(DEMO)/data
	$(PY) -m convert labels --data $(DEMO)/data --out $(DEMO)/labels
	$(PY) -m convert splits --data $(DEMO)/data --out $(DEMO)/splits
	$(PY) -m convert shards --data $(DEMO)/data --labels $(DEMO)/labels/IGBP_probability_labels.json --splits $(DEMO)/splits --out $(DEMO)/shards
	$(PY) -m convert verify $(DEMO)/shards
	$(PY) -m convert overview --shards $(DEMO)/shards --out $(DEMO)/overview
	$(PY) -m train --shards $(DEMO)/shards --model SmallCNN --input s1s2 --label-type single_label --epochs 20 --batch-size 16 --stats manifest --workers 2 --run-dir $(DEMO)/runs/smallcnn_s1s2
	$(PY) -m train.evaluate --shards $(DEMO)/shards --checkpoint $$(ls $(DEMO)/runs/smallcnn_s1s2/checkpoints/*_model_best.pth) --out $(DEMO)/runs/smallcnn_s1s2/evaluate
	@echo
	@echo "demo outputs:"
	@echo "  sample dataset   $(DEMO)/data"
	@echo "  labels, splits   $(DEMO)/labels  $(DEMO)/splits"
	@echo "  shards           $(DEMO)/shards (manifest.json, report.json)"
	@echo "  overview         $(DEMO)/overview/index.html"
	@echo "  training run     $(DEMO)/runs/smallcnn_s1s2 (logs/, checkpoints/, test_scores.json, test_predictions.npz, evaluate/)"

shards: install
	$(PY) -m convert shards --data $(DATA) --out $(OUT)

s3-local: install
	@$(PY) -m convert s3-local $(if $(S3_DIR),--dir $(S3_DIR))

# The bench installs the peer libraries of its comparison rows too (the .[bench] extra).
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[$(EXTRAS),bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(DEMO) out runs .pytest_cache
