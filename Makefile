# VMR: every step sets itself up (a venv keyed on requirements.txt + pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)

VIDEOS ?= videos
OUT ?= features
FEATURES ?= resnet clip vggish
DEVICE ?= cpu
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup setup-gpu sysdeps test demo features weights bench lists notebooks mgsv docs

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

# Optional GPU extra: NVML bindings, so that bench/gpu.py reports the video decoder's (NVDEC) utilisation.
# Decoding on NVDEC itself needs nothing more: PyAV's bundled FFmpeg has the CUDA hwaccels.
setup-gpu: setup
	$(PY) -m pip install -q nvidia-ml-py==13.615.71

# System packages the tests drive for real: a one-node Slurm cluster and headless Chromium.
SYS_PKGS := slurmctld slurmd slurm-client munge chromium chromium-driver
sysdeps:
	@missing=""; for p in $(SYS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "not root: install$$missing with apt-get to run the Slurm and browser tests (they are skipped)"; \
	fi

test: setup sysdeps
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

demo: setup
	$(PY) -m vmr.demo $(ARGS)

features: setup
	$(PY) feature_extraction/extract.py --videos $(VIDEOS) --out $(OUT) --features $(FEATURES) --device $(DEVICE) $(ARGS)

weights: setup
	$(PY) feature_extraction/weights.py --download all

bench: setup
	$(PY) bench/run.py --out bench/results.json

lists: setup
	$(PY) lists/himv.py

# MGSV-EC: fetch the public release and convert it (python -m vmr.mgsv --help). OUT defaults to mgsv here, not to
# the features folder of `make features`: `make mgsv OUT=/data/mgsv ARGS="--splits test --dtype float16"`.
mgsv: setup
	$(PY) -m vmr.mgsv --out $(if $(filter command line environment,$(origin OUT)),$(OUT),mgsv) $(ARGS)

notebooks: setup
	$(PY) -m vmnet.notebooks --demo_dir $${VMR_DEMO_DIR:-demo_out}

# The documentation site, offline, into site/; --strict: a broken link, missing page or anchor fails the build.
# VMR_BENCH_JSON=bench/results.json renders the benchmark tables from your own `make bench`.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
