#!/usr/bin/env bash
# A virtual environment with the Python packages the tests use (the jinja2 template oracle,
# and the official openai SDK for end-to-end tests). Re-running it is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS="tests/python/requirements.txt"
STAMP=".venv/.installed-$(sha256sum "$REQUIREMENTS" | cut -c1-16)"
if [[ -f "$STAMP" ]]; then
  exit 0
fi
if ! python3 -m venv .venv >/dev/null 2>&1; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
touch "$STAMP"
