# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): torch, torchvision, open_clip and petvr (about 1.5 minutes the first time)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.PHONY: setup demo test test-slow browser
setup: $(STAMP)

# The web page test (tests/test_search_server.py) drives headless Chromium; it is installed from Debian's packages
# (about 40 s) when apt-get can run as root, else the test is skipped and says why.
CHROMIUM_PACKAGES := chromium chromium-driver
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing $(CHROMIUM_PACKAGES) from Debian's packages for the web page test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CHROMIUM_PACKAGES) >/dev/null) \
	    || echo "could not install Chromium: the web page test will be skipped"; \
	else echo "no Chromium, and apt-get cannot run as root: the web page test will be skipped"; fi

demo: setup
	$(VENV)/bin/petvr demo

test: setup browser
	$(VENV)/bin/python -m pytest -q

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow
