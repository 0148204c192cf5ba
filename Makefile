# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): torch, torchvision, open_clip and petvr (about 1.5 minutes the first time)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.PHONY: setup demo test test-slow
setup: $(STAMP)

demo: setup
	$(VENV)/bin/petvr demo

test: setup
	$(VENV)/bin/python -m pytest -q

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow
