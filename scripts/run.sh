#!/usr/bin/env bash
# Set up (system packages, default model, release build) and serve the default model over the OpenAI API.
# Arguments go to `hearth serve`, e.g. ./scripts/run.sh --port 9000
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
./scripts/fetch-model.sh
cargo build --release --locked --quiet
exec ./target/release/hearth serve "$@"
