#!/usr/bin/env bash
# Here (the CPU machine): make the kit the GPU machine needs, in .gpu/ (ignored): a hearth
# binary linked against llama.cpp's shared libraries (the GPU machine builds CUDA ones from
# the same source, so the one binary runs there on its GPU), that llama.cpp source, the
# peers' llama.cpp (from the llama-cpp-python sdist: it has llama-bench, llama-batched-bench
# and llama-server), a vocabulary for random-weight models, and the gguf wheel.
# Then scripts/gpu/run.sh runs there (docs/benchmarks.md, "GPU", has the calls).
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=.gpu
mkdir -p "$KIT"
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

# A separate target directory: the shared-library build must not replace the static one.
LLAMA_BUILD_SHARED_LIBS=1 CARGO_TARGET_DIR="${SHARED_TARGET:-/tmp/target-shared}" \
  cargo build --release --locked -p hearth
target="${SHARED_TARGET:-/tmp/target-shared}/release"
strip -o "$KIT/hearth" "$target/hearth"

vendored=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.160/llama.cpp | head -1)
tar cJf "$KIT/hearth-llama.tar.xz" -C "$(dirname "$vendored")" \
  --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
  --exclude=llama.cpp/gguf-py llama.cpp

if [[ ! -f "$KIT/peers-llama.tar.xz" ]]; then
  work=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: \
    llama-cpp-python==0.3.36 -d "$work"
  tar xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
  tar cJf "$KIT/peers-llama.tar.xz" -C "$work/llama_cpp_python-0.3.36/vendor" \
    --exclude=llama.cpp/build --exclude=llama.cpp/models --exclude=llama.cpp/docs \
    --exclude=llama.cpp/media --exclude=llama.cpp/gguf-py --exclude=llama.cpp/.git \
    --exclude=llama.cpp/tools/server/webui --exclude=llama.cpp/ggml/src/ggml-vulkan \
    --exclude=llama.cpp/ggml/src/ggml-sycl --exclude=llama.cpp/ggml/src/ggml-metal \
    --exclude=llama.cpp/ggml/src/ggml-opencl --exclude=llama.cpp/ggml/src/ggml-cann \
    --exclude=llama.cpp/ggml/src/ggml-webgpu llama.cpp
  rm -rf "$work"
fi

.venv/bin/python -m pip install --quiet -r scripts/requirements-convert.txt
.venv/bin/python scripts/gpu/vocab-gguf.py models/SmolLM2-135M-Instruct.Q4_1.gguf "$KIT/vocab.gguf"
.venv/bin/python -m pip download --quiet --no-deps gguf==0.19.0 -d "$KIT"
# The chats of scripts/bench-peer-cache.py's workload b (8 questions under one ~400-token
# system prompt), for stream-bench.py on the GPU machine.
.venv/bin/python - "$KIT/prompts-b.json" <<'PY'
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("peer", "scripts/bench-peer-cache.py")
sys.path.insert(0, "scripts")
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
chats = [[{"role": "system", "content": peer.SYSTEM_B}, {"role": "user", "content": q}]
         for q in peer.QUESTIONS_B]
json.dump(chats, open(sys.argv[1], "w"))
PY
cp scripts/gpu/mkmodel.py scripts/gpu/quantize.c scripts/gpu/stream-bench.py scripts/gpu/checks.py \
  scripts/gpu/agreement.py "$KIT/"
du -sh "$KIT"
