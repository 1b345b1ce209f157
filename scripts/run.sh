#!/usr/bin/env bash
# Set up (system packages, default model, release build) and run hearth on the default model.
# Arguments go to `hearth run`, e.g. ./scripts/run.sh "What is the capital of France?"
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
./scripts/fetch-model.sh
cargo build --release --locked --quiet
exec ./target/release/hearth run "$@"
