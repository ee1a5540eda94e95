# datacomp — every target creates .venv when it is missing and installs the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export RAY_USAGE_STATS_ENABLED := 0
DEMO_DIR ?= demo
DEMO_SCALE ?= synth_demo
DEMO_RECIPES ?= no_filter,basic_filter,clip_score_l14_30
SEED ?= 0

.PHONY: all install demo test test-fast bench clean wordnet chromium

all: test

$(BIN)/datacomp: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/datacomp wordnet

# WordNet 3.0 for the text-based filter, offline: Debian's wordnet-base + wordnet-sense-index
# (installed with apt-get when missing; needs root) copied into an NLTK data dir with `lexnames`.
WORDNET_DIR ?= $(VENV)/share/nltk_data
wordnet: $(WORDNET_DIR)/corpora/wordnet/lexnames

$(WORDNET_DIR)/corpora/wordnet/lexnames: $(BIN)/datacomp
	test -f /usr/share/wordnet/data.noun || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base wordnet-sense-index; }
	$(BIN)/python -m datacomp.filters.wordnet --src /usr/share/wordnet --out $(WORDNET_DIR)

# Headless Chromium (Debian's `chromium`) for the report's browser test; apt-get when missing (needs root).
chromium:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: install
	$(BIN)/datacomp run --scale $(DEMO_SCALE) --workdir $(DEMO_DIR) --recipes $(DEMO_RECIPES) --seed $(SEED)

test: install chromium
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
