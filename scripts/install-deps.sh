#!/usr/bin/env bash
# Install what building hearth needs on a fresh Debian machine: cmake and libclang (bindgen
# for llama.cpp), promtool (from `prometheus`; the tests check /metrics with it), and
# Chromium (the chat page's tests drive it with Playwright).
# Does nothing when all are present.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
if ! ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1; then
  missing+=(clang)
fi
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Chromium is for the chat page's browser tests only: a machine that cannot install it
# still builds and tests everything else (those tests then say they were skipped, and why).
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing: chromium (for the chat page's browser tests)" >&2
  if ! { $SUDO apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
    echo "warning: chromium could not be installed; the browser tests will be skipped" >&2
  fi
fi
