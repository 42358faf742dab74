# SEN12MS toolbox. `make test` and `make demo` need nothing but Python 3.10+ and the package registry.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= s3,dali,lightning,torchgeo,dev
comma := ,
# One stamp per set of extras: `make test` after `make demo EXTRAS=s3` installs the test tools.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DATA ?= /sen12ms
OUT ?= out/
DEMO ?= demo
DEMO_SEG ?= demo-seg
SEG_SCENES ?= 12
SEG_EPOCHS ?= 10
# worksteal: an idle worker takes queued tests from the busy one, so the suite does not end on one
# worker's tail of long runs (18.6 min against 19.5-20.4 with xdist's default, 2 cores).
TEST_ARGS ?= -n 2 --dist worksteal
S3_DIR ?=

GPU_CHECK_DIR ?= gpucheck

.PHONY: install test test-fast demo demo-seg shards s3-local bench mds-env gpu-check clean help

help:
	@echo "make install        create .venv with every pinned dependency"
	@echo "make test           install, then run the whole test suite"
	@echo "make test-fast      the unit tests only (pytest -m 'not slow'), about a minute and a half"
	@echo "make demo           sample dataset -> labels, splits -> shards -> short training + evaluation"
	@echo "make demo-seg       sample SEN12MS + DFC2020 trees -> shards -> segmentation run scored on DFC2020 -> maps"
	@echo "make shards DATA=/sen12ms [OUT=out/]   convert a SEN12MS tree (train, val, test shards)"
	@echo "make s3-local [S3_DIR=store/]   a local S3 store (SeaweedFS), prints the AWS variables; Ctrl-C stops it"
	@echo "make bench          loader / codec / training figures into docs/benchmarks.md"
	@echo "make mds-env        the environment of MosaicML streaming's bench rows (.venv/mds; make bench makes it)"
	@echo "make gpu-check      on a CUDA machine: DALI GPU pipeline, AMP + channels-last ResNet50 -> docs/gpu.md (under 5 min)"
	@echo "make clean          remove what the Makefile made (demo/, demo-seg/, bench/data, bench/out, gpucheck/); never out/ or runs/"

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
	@echo "make demo: sample data -> shards -> 20 epochs of a small CNN -> evaluation; about 10 minutes on 2 idle CPU cores (more on a busy machine)"
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
	@echo "  training run     $(DEMO)/runs/smallcnn_s1s2: metrics.csv (one row per epoch), training_curves.png,"
	@echo "                   test_scores.json, test_confusion.png, test_predictions.npz, checkpoints/, evaluate/"
	@echo "  TensorBoard      tensorboard --logdir $(DEMO)/runs/smallcnn_s1s2/logs"

# Segmentation as the DFC2020 baseline: trained on SEN12MS lc masks, validated and tested on DFC2020 (no
# --no-savanna needed: DFC2020 splits leave savanna out by default). A few minutes on a CPU.
demo-seg: install
	rm -rf $(DEMO_SEG)
	$(PY) -m convert synth --out $(DEMO_SEG)/sen12ms --scenes $(SEG_SCENES) --patches-per-scene 4 --seed 3
	$(PY) -m convert synth --layout dfc2020 --out $(DEMO_SEG)/dfc2020 --scenes 4 --patches-per-scene 4 --seed 3
	$(PY) -m convert shards --data $(DEMO_SEG)/sen12ms --data $(DEMO_SEG)/dfc2020 --out $(DEMO_SEG)/shards --modalities s1,s2,lc --no-progress
	$(PY) -m train --task segmentation --model SmallUNet --input s2hr+s2mr+s1 --stats official --shards $(DEMO_SEG)/shards --val-split dfc2020_val --test-split dfc2020_test --epochs $(SEG_EPOCHS) --batch-size 4 --lr 0.003 --augment --workers 0 --run-dir $(DEMO_SEG)/runs/smallunet --no-progress
	$(PY) -m train.predict --checkpoint $$(ls $(DEMO_SEG)/runs/smallunet/checkpoints/*_model_best.pth) --shards $(DEMO_SEG)/shards --split dfc2020_test --out $(DEMO_SEG)/maps
	@echo
	@echo "demo-seg outputs:"
	@echo "  sample trees     $(DEMO_SEG)/sen12ms  $(DEMO_SEG)/dfc2020"
	@echo "  shards           $(DEMO_SEG)/shards"
	@echo "  training run     $(DEMO_SEG)/runs/smallunet (test_scores.json on dfc2020_test; TensorBoard: logs/runs/)"
	@echo "  land-cover maps  $(DEMO_SEG)/maps (GeoTIFFs, previews/)"

shards: install
	$(PY) -m convert shards --data $(DATA) --out $(OUT)

s3-local: install
	@$(PY) -m convert s3-local $(if $(S3_DIR),--dir $(S3_DIR))

# The bench installs the peer libraries of its comparison rows too (the .[bench] extra).
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[$(EXTRAS),bench]"
	touch $(BENCH_STAMP)

# MosaicML streaming caps numpy below 2.2 (the stack pins 2.4.6): its rows run in an environment of its
# own over .venv's packages (bench/cases/mds.py). Without it (no registry) those rows say "not installed".
MDS_STAMP := $(VENV)/mds/.installed

mds-env: $(MDS_STAMP)

$(MDS_STAMP): requirements/mds-side.txt $(BENCH_STAMP)
	$(PY) -m bench.cases.mds
	touch $(MDS_STAMP)

bench: $(BENCH_STAMP)
	$(MAKE) mds-env || echo "make bench: no MosaicML streaming environment; its rows will say 'not installed'"
	$(PY) -m bench

gpu-check: install
	$(PY) -m bench.gpu.check --scratch $(GPU_CHECK_DIR)

# Only what the targets above made: out/ (the README's shards) and runs/ (the trainer's default
# run folder) hold real work and are never touched.
clean:
	rm -rf $(DEMO) $(DEMO_SEG) bench/data bench/out $(GPU_CHECK_DIR) .pytest_cache
