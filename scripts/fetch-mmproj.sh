#!/usr/bin/env bash
# Make the vision test projector, models/smollm2-test-mmproj.gguf: a tiny random-weight LLaVA-style
# ("mlp") mmproj for the default model SmolLM2-135M-Instruct (n_embd 576), written by
# scripts/make-test-mmproj.py with the gguf package (no real vision model can be downloaded here).
# Every image becomes 16 tokens whose embeddings mean nothing; it is for tests of the image path only.
# The generator is deterministic: the SHA-256 below holds for the gguf version in
# scripts/requirements-convert.txt, so a change there (or in the script) is caught.
# Idempotent: a verified file is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_FILE="smollm2-test-mmproj.gguf"
MODEL_SHA256="d52eab5ec10ac84d5503206859712789b94b103c976f705d42d55aaaeb64d622"
TEXT_MODEL="models/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET="models/${MODEL_FILE}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TARGET" && "$(sha256_of "$TARGET")" == "$MODEL_SHA256" ]]; then
  exit 0
fi

# The projector's output width is read from the text model.
./scripts/fetch-model.sh
./scripts/python-env.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-convert.txt

mkdir -p models
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "generating ${TARGET}..." >&2
.venv/bin/python scripts/make-test-mmproj.py "$work/$MODEL_FILE" --text-model "$TEXT_MODEL" >&2
if [[ "$(sha256_of "$work/$MODEL_FILE")" != "$MODEL_SHA256" ]]; then
  echo "error: ${MODEL_FILE} does not have the expected SHA-256 (gguf package version changed?)" >&2
  exit 1
fi
mv "$work/$MODEL_FILE" "$TARGET"
echo "projector ready: $TARGET" >&2
