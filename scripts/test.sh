#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run every test.
# Tests run in the release profile, so llama.cpp's C++ is compiled once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
./scripts/fetch-model.sh
./scripts/fetch-tool-model.sh
./scripts/python-env.sh
./scripts/fetch-embedding-model.sh
./scripts/fetch-mmproj.sh
export HEARTH_PYTHON="$PWD/.venv/bin/python"

# Lint first: formatting and clippy findings fail the run before anything slow starts.
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo build --release --locked
cargo test --release --locked --workspace
.venv/bin/python -m pytest -q -rs tests/python
