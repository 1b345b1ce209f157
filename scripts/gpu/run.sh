#!/usr/bin/env bash
# There (the GPU machine, no Rust, no network): `run.sh build` builds llama.cpp's CUDA shared
# libraries for hearth and the peers (llama-bench, llama-batched-bench, llama-server) from
# the kit's sources, and random-weight models; `run.sh bench` measures. Everything lands in
# /tmp/hg; results in $OUT. Made by scripts/gpu/pack.sh; docs/benchmarks.md ("GPU") has the
# exact calls and the results.
set -euo pipefail
KIT=${KIT:-.gpu}
W=/tmp/hg
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
CUDA_FLAGS=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=ON)

build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  tar xJf "$KIT/hearth-llama.tar.xz" -C "$W"
  mkdir -p "$W/peers" && tar xJf "$KIT/peers-llama.tar.xz" -C "$W/peers"
  # hearth's libraries: shared, with common (llama.cpp's fit) and mtmd (vision), no tools
  # (the crate's llama.cpp ships their READMEs only).
  cmake -S "$W/llama.cpp" -B "$W/build" "${CUDA_FLAGS[@]}" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_MTMD=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_CURL=OFF > "$W/hearth-cmake.log" 2>&1
  # The peers: static, same CUDA flags.
  cmake -S "$W/peers/llama.cpp" -B "$W/peers/build" "${CUDA_FLAGS[@]}" -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_CURL=OFF > "$W/peers-cmake.log" 2>&1
  (cmake --build "$W/build" -j 8 > "$W/hearth-build.log" 2>&1; echo $? > "$W/hearth-build.rc") &
  (cmake --build "$W/peers/build" -j 8 --target ${PEER_TARGETS:-llama-bench llama-batched-bench llama-server} \
    > "$W/peers-build.log" 2>&1; echo $? > "$W/peers-build.rc") &
  # Random-weight llama shapes with SmolLM2's 49k vocabulary, meanwhile.
  # (A build cut off by a time limit resumes where it stopped: the model is kept.)
  if [[ ! -f "$W/8b-q4km.gguf" ]]; then
    python3 -m pip install -q --no-deps --target "$W/site" "$KIT"/gguf-*.whl
    PYTHONPATH="$W/site" python3 "$KIT/mkmodel.py" "$KIT/vocab.gguf" "$W/8b-f16.gguf" 8b
  fi
  wait
  tail -n 3 "$W/hearth-build.log" "$W/peers-build.log"
  [[ $(cat "$W/hearth-build.rc") == 0 && $(cat "$W/peers-build.rc") == 0 ]]
  gcc -O2 -o "$W/quantize" "$KIT/quantize.c" -I "$W/llama.cpp/include" \
    -I "$W/llama.cpp/ggml/include" -L "$W/build/bin" -lllama -Wl,-rpath,"$W/build/bin"
  if [[ ! -f "$W/8b-q4km.gguf" ]]; then
    # Written aside and renamed: a quantization cut off leaves no half model behind.
    "$W/quantize" "$W/8b-f16.gguf" "$W/8b-q4km.gguf.part" > "$W/quantize.log" 2>&1
    mv "$W/8b-q4km.gguf.part" "$W/8b-q4km.gguf"
    rm -f "$W/8b-f16.gguf"
  fi
  ls -la "$W"/*.gguf
  LD_LIBRARY_PATH="$W/build/bin" ldd "$KIT/hearth" | grep -E "llama|ggml|mtmd|cuda" | tee "$OUT/ldd.txt"
}

bench() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model="$W/8b-q4km.gguf" hearth="$KIT/hearth" peers="$W/peers/build/bin"
  {
    echo "## llama-bench tg128, pp512"
    "$peers/llama-bench" -m "$model" -ngl 99 -p 512 -n 128 -r 3
    echo "## llama-batched-bench, 1/8/32 sequences, 128 prompt + 128 generated each"
    "$peers/llama-batched-bench" -m "$model" -ngl 99 -c 16384 -b 2048 -ub 512 \
      -npp 128 -ntg 128 -npl 1,8,32
    echo "## hearth bench (engine), --gpu-layers auto"
    "$hearth" bench --model "$model" --prompt-tokens 512 --gen-tokens 128 \
      --concurrency 1,8,32 --repeat 3
  } 2>&1 | tee "$OUT/engine.txt"
}

# The engine's own time against llama.cpp's tools built from the same source (and the
# peers'), at the shapes of llama-batched-bench: 128-token prompts, 128 generated tokens.
# `hearth bench` also prints where its steps' time goes (build, decode, wait, sample,
# emit). A second hearth binary (HEARTH_BASE, e.g. the previous build) runs the same for a
# before/after in one sitting.
overhead() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model="$W/8b-q4km.gguf" peers="$W/peers/build/bin" src="$W/peers/llama.cpp"
  {
    # The peers' batched-bench source built against hearth's llama.cpp, where the two APIs
    # still agree: the engine's overhead apart from the difference between llama.cpps.
    if g++ -O2 -std=c++17 -o "$W/same-batched-bench" "$src"/tools/batched-bench/*.cpp \
        -I "$W/llama.cpp/common" -I "$W/llama.cpp/include" -I "$W/llama.cpp/ggml/include" \
        -L "$W/build/bin" -lllama-common -lllama -lggml -lggml-base \
        -Wl,-rpath,"$W/build/bin" > "$W/same.log" 2>&1; then
      echo "## llama-batched-bench (hearth's llama.cpp), 1/8/32 sequences, 128 + 128"
      "$W/same-batched-bench" -m "$model" -ngl 99 -c 16384 -b 2048 -ub 512 \
        -npp 128 -ntg 128 -npl 1,8,32
    else
      echo "## (the peers' batched-bench does not build against hearth's llama.cpp)"
      tail -n 5 "$W/same.log"
    fi
    echo "## llama-bench (peers' llama.cpp): tg128 at depth 0 and 128"
    "$peers/llama-bench" -m "$model" -ngl 99 -p 0 -n 128 -d 0,128 -r 3
    echo "## llama-batched-bench (peers' llama.cpp), 1/8/32 sequences, 128 + 128"
    "$peers/llama-batched-bench" -m "$model" -ngl 99 -c 16384 -b 2048 -ub 512 \
      -npp 128 -ntg 128 -npl 1,8,32
    for bin in ${HEARTH_BASE:-} "$KIT/hearth"; do
      echo "## $bin bench (engine), --gpu-layers auto, 128 + 128"
      "$bin" bench --model "$model" --prompt-tokens 128 --gen-tokens 128 \
        --concurrency 1,8,32 --repeat 3
    done
    echo "## $KIT/hearth bench (engine), --greedy-on-device on (greedy tokens chosen on the GPU)"
    "$KIT/hearth" bench --model "$model" --prompt-tokens 128 --gen-tokens 128 \
      --concurrency 1,8,32 --repeat 3 --greedy-on-device on
  } 2>&1 | tee "$OUT/overhead.txt"
}

# Where the distance between hearth's llama.cpp and the peers' comes from: the peers'
# llama.cpp built a second time as shared libraries (as hearth's are), and the peers'
# llama-bench / llama-batched-bench sources compiled against hearth's libraries. Same tools,
# same model; only the library build (static/shared) or the llama.cpp version changes.
linkage_build() {
  mkdir -p "$W/peers-so" && tar xJf "$KIT/peers-llama.tar.xz" -C "$W/peers-so"
  cmake -S "$W/peers-so/llama.cpp" -B "$W/peers-so/build" "${CUDA_FLAGS[@]}" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_CURL=OFF > "$W/peers-so-cmake.log" 2>&1
  cmake --build "$W/peers-so/build" -j 8 --target llama-bench llama-batched-bench \
    > "$W/peers-so-build.log" 2>&1
  tail -n 2 "$W/peers-so-build.log"
}

linkage() {
  local model="$W/8b-q4km.gguf" src="$W/peers/llama.cpp" tool
  for tool in llama-bench batched-bench; do
    g++ -O2 -std=c++17 -o "$W/same-$tool" "$src"/tools/$tool/*.cpp \
      -I "$W/llama.cpp/common" -I "$W/llama.cpp/include" -I "$W/llama.cpp/ggml/include" \
      -L "$W/build/bin" -lllama-common -lllama -lggml -lggml-base \
      -Wl,-rpath,"$W/build/bin" > "$W/same-$tool.log" 2>&1 || tail -n 5 "$W/same-$tool.log"
  done
  {
    for round in 1 2; do
      echo "## round $round: llama-bench tg128 -r 5"
      echo "# peers' llama.cpp, static"
      "$W/peers/build/bin/llama-bench" -m "$model" -ngl 99 -p 0 -n 128 -r 5 2>/dev/null | grep -E "tg128|model"
      echo "# peers' llama.cpp, shared"
      LD_LIBRARY_PATH="$W/peers-so/build/bin" "$W/peers-so/build/bin/llama-bench" -m "$model" \
        -ngl 99 -p 0 -n 128 -r 5 2>/dev/null | grep -E "tg128|model"
      echo "# hearth's llama.cpp, shared (peers' llama-bench source)"
      LD_LIBRARY_PATH="$W/build/bin" "$W/same-llama-bench" -m "$model" -ngl 99 -p 0 -n 128 -r 5 \
        2>/dev/null | grep -E "tg128|model"
    done
    echo "## llama-batched-bench 1/32: peers static, peers shared, hearth's shared"
    for bin in "$W/peers/build/bin/llama-batched-bench" "$W/peers-so/build/bin/llama-batched-bench" \
        "$W/same-batched-bench"; do
      echo "# $bin"
      LD_LIBRARY_PATH="$W/peers-so/build/bin" && [[ $bin == "$W/same-batched-bench" ]] && LD_LIBRARY_PATH="$W/build/bin"
      LD_LIBRARY_PATH=$LD_LIBRARY_PATH "$bin" -m "$model" -ngl 99 -c 8192 -b 2048 -ub 512 \
        -npp 128 -ntg 128 -npl 1,32 2>&1 | grep -E "^\|"
    done
  } 2>&1 | tee "$OUT/linkage.txt"
}

# GPU memory in the lifecycle: two models that each take ~60% of the card (the 8B weights
# plus a large KV cache), one after the other. The second load finds the first idle and
# unloads it to make room (`evicted to make room on the GPU`), so it gets every layer; the
# RAM budget is lifted so that only the GPU policy acts.
evict() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model="$W/8b-q4km.gguf" total ctx pid
  ln -sf "$model" "$W/8b-copy.gguf"
  wait_up() { for _ in $(seq 120); do curl -sf "$1" > /dev/null && return 0; sleep 1; done; return 1; }
  total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  # KV per token of the 8B shape: 32 layers x 8 KV heads x 128 x (K + V) x 2 bytes.
  ctx=$(python3 -c "print(int((${total} * 2**20 * 0.6 - 5e9) / (64 * 131072)) // 256 * 256)")
  {
    echo "## two models of ~60% of ${total} MiB each: 64 slots x ${ctx} tokens"
    "$KIT/hearth" serve --port 18082 --model "a=$model" --model "b=$W/8b-copy.gguf" \
      --parallel 64 --ctx-size "$ctx" --memory-budget 1000GiB > "$W/evict.log" 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:18082/health/ready
    for m in a b a; do
      python3 "$KIT/stream-bench.py" http://127.0.0.1:18082 $m 1 16 0,1,2
      nvidia-smi --query-gpu=memory.used --format=csv,noheader
      curl -s http://127.0.0.1:18082/v1/models | python3 -c 'import json,sys
for m in json.load(sys.stdin)["data"]: print(m["id"], m.get("state"), m.get("placement"))'
    done
    grep -E "unloading|evicted" "$W/evict.log" | cut -c1-200
    kill $pid; wait $pid || true
  } 2>&1 | tee "$OUT/evict.txt"
}

# Through HTTP: the same model, 64 slots of 512 tokens each, streams of 128 tokens with
# end-of-generation banned (SmolLM2's 0, 1, 2), 1 / 32 / 64 at once.
http() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model="$W/8b-q4km.gguf" peers="$W/peers/build/bin" n
  wait_up() { for _ in $(seq 120); do curl -sf "$1" > /dev/null && return 0; sleep 1; done; return 1; }
  {
    echo "## hearth serve"
    "$KIT/hearth" serve --port 18080 --model "bench=$model" --parallel 64 --ctx-size 512 \
      --preload > "$W/hearth-serve.log" 2>&1 &
    local pid=$!
    wait_up http://127.0.0.1:18080/health/ready
    curl -s http://127.0.0.1:18080/v1/models
    # Rounds repeat, as clients do: later rounds find their prompts cached in scattered slots.
    for n in 1 1 1 32 32 32 64 64; do python3 "$KIT/stream-bench.py" http://127.0.0.1:18080 bench $n 128 0,1,2; done
    echo "## structured output and stop strings on the GPU"
    python3 "$KIT/checks.py" http://127.0.0.1:18080 bench || echo "CHECKS FAILED"
    curl -s http://127.0.0.1:18080/health/ready | head -c 2000; echo
    curl -s http://127.0.0.1:18080/metrics | grep -E "^hearth:(gpu|model_vram)"
    echo "## a worker killed mid-stream frees its VRAM; the next request is served"
    python3 "$KIT/stream-bench.py" http://127.0.0.1:18080 bench 4 300 0,1,2 &
    local streams=$!
    sleep 1
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    pkill -9 -f hearth-worker-bench || true
    sleep 3
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    wait $streams || true
    python3 "$KIT/stream-bench.py" http://127.0.0.1:18080 bench 1 16 0,1,2
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    curl -s http://127.0.0.1:18080/metrics | grep -E "^hearth:worker_restarts"
    kill $pid; wait $pid || true
    echo "## llama-server"
    "$peers/llama-server" -m "$model" -ngl 99 -np 64 -c 32768 --port 18081 \
      > "$W/llama-server.log" 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:18081/health
    for n in 1 1 1 32 32 32 64 64; do python3 "$KIT/stream-bench.py" http://127.0.0.1:18081 bench $n 128 0,1,2; done
    kill $pid; wait $pid || true
  } 2>&1 | tee "$OUT/http.txt"
}

# Workload b of scripts/bench-peer-cache.py (issue 12) on the GPU, with the default model
# (MODEL, SmolLM2-135M Q4_1): 8 slots of 2048 tokens, 8 streams sharing a ~400-token system
# prompt, 64 tokens each with end-of-turn banned, 9 rounds; hearth (HEARTH_BASE, e.g. the
# previous build, then the kit's) against llama-server.
peer_b() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model=${MODEL:?the default model} peers=${PEERS:-$W/peers/build/bin} pid bin
  wait_up() { for _ in $(seq 120); do curl -sf "$1" > /dev/null && return 0; sleep 1; done; return 1; }
  {
    for bin in ${HEARTH_BASE:-} "$KIT/hearth"; do
      echo "## $bin serve"
      "$bin" serve --port 18083 --model "smol=$model" --parallel 8 --ctx-size 2048 \
        --preload > "$W/hearth-b.log" 2>&1 &
      pid=$!
      wait_up http://127.0.0.1:18083/health/ready
      for _ in $(seq ${ROUNDS:-9}); do
        python3 "$KIT/stream-bench.py" http://127.0.0.1:18083 smol 8 64 0,1,2 "$KIT/prompts-b.json"
      done
      kill $pid; wait $pid || true
    done
    echo "## llama-server"
    "$peers/llama-server" -m "$model" -ngl 99 -np 8 -c 16384 --cache-reuse 0 --port 18084 \
      > "$W/llama-server-b.log" 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:18084/health
    for _ in $(seq ${ROUNDS:-9}); do
      python3 "$KIT/stream-bench.py" http://127.0.0.1:18084 smol 8 64 0,1,2 "$KIT/prompts-b.json"
    done
    kill $pid; wait $pid || true
  } 2>&1 | tee "$OUT/peer-b.txt"
}

# Several GPUs (nvidia-h100-x2): the default model (MODEL) split 3:1 and 1:3 with
# --tensor-split (4 slots of 8192 tokens, so the KV cache shows in each card's memory);
# each card's memory in use while it is loaded, and the same greedy reply from both.
tensor_split() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model=${MODEL:?the default model} pid split
  wait_up() { for _ in $(seq 120); do curl -sf "$1" > /dev/null && return 0; sleep 1; done; return 1; }
  {
    nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
    for split in 3,1 1,3; do
      echo "## --tensor-split $split"
      "$KIT/hearth" serve --port 18085 --model "smol=$model" --parallel 4 --ctx-size 8192 \
        --tensor-split "$split" --preload > "$W/split.log" 2>&1 &
      pid=$!
      wait_up http://127.0.0.1:18085/health/ready || tail -n 20 "$W/split.log"
      nvidia-smi --query-gpu=index,memory.used --format=csv,noheader
      curl -s http://127.0.0.1:18085/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"model":"smol","temperature":0,"max_tokens":24,"messages":[{"role":"user","content":"Name three rivers of Europe."}]}' \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
      curl -s http://127.0.0.1:18085/health/ready | python3 -c 'import json,sys
for m in json.load(sys.stdin)["models"].values(): print(m.get("placement"), m.get("gpus"))'
      kill $pid; wait $pid || true
    done
  } 2>&1 | tee "$OUT/tensor-split.txt"
}

# The 32-sequence engine goal in rounds that alternate with the peer (the card's speed drifts
# by a few percent within minutes, so one run of each is not a comparison): the peers'
# llama-batched-bench S_TG, then `hearth bench`'s aggregate (the steps where all 32
# sequences decode, as S_TG counts), ROUNDS times; VARIANTS (`A=1 B=2;C=3`) adds runs of the
# same binary under those environment settings. Single stream once: llama-bench tg128.
engine32() {
  export LD_LIBRARY_PATH="$W/build/bin"
  local model="$W/8b-q4km.gguf" r v
  local hearth=("$KIT/hearth" bench --model "$model" --prompt-tokens 128 --gen-tokens 128 --repeat 3)
  {
    echo "## single stream: llama-bench tg128 (peers), hearth bench tg128"
    "$W/peers/build/bin/llama-bench" -m "$model" -ngl 99 -p 0 -n 128 -r 3 2>/dev/null | grep tg128
    "${hearth[@]}" --concurrency 1 2>&1 | grep -E "tg128 \(|^\| 1 \|"
    for r in $(seq "${ROUNDS:-4}"); do
      echo "## round $r, $(date +%T)"
      echo -n "llama-batched-bench S_TG: "
      "$W/peers/build/bin/llama-batched-bench" -m "$model" -ngl 99 -c 16384 -b 2048 -ub 512 \
        -npp 128 -ntg 128 -npl 32 2>&1 | grep -E "^\| +128" | awk -F'|' '{print $9}'
      echo "hearth: $("${hearth[@]}" --concurrency 32 2>&1 | grep -E "aggregate|^\| 32 \|" | tr '\n' ' ')"
      IFS=';' read -ra variants <<< "${VARIANTS:-}"
      for v in "${variants[@]}"; do
        # shellcheck disable=SC2086 # the variant is a list of assignments
        echo "hearth $v: $(env $v "${hearth[@]}" --concurrency 32 2>&1 | grep -E "aggregate|^\| 32 \|" | tr '\n' ' ')"
      done
    done
  } 2>&1 | tee "$OUT/engine32.txt"
}

"$@"
