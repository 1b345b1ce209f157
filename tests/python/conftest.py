"""Start a real `hearth serve` with the default model for the SDK tests."""
import os
import pathlib
import re
import subprocess
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "hearth"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOOL_MODEL = ROOT / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
EMBEDDING_MODEL = ROOT / "models" / "all-MiniLM-L6-v2.F16.gguf"


class Server:
    def __init__(self, *extra, models=(f"smol={MODEL}",), ctx_size=1024, parallel=8):
        model_args = [arg for model in models for arg in ("--model", model)]
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--port", "0", "--threads", "2", "--ctx-size", str(ctx_size),
             "--parallel", str(parallel), *model_args, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HEARTH_LOG": "warn"},
        )
        ready = threading.Event()
        self.base_url = None

        def read_stderr():
            for line in self.process.stderr:
                match = re.search(r"listening on (http://\S+)", line)
                if match and not ready.is_set():
                    self.base_url = match.group(1) + "/v1"
                    ready.set()
        threading.Thread(target=read_stderr, daemon=True).start()
        if not ready.wait(60):
            self.process.kill()
            raise RuntimeError("hearth did not start")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def server():
    s = Server("--preload")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tool_server():
    """Qwen2.5-Coder-0.5B (tool template) and SmolLM2 (no tool template) side by side."""
    s = Server(models=(f"qwen={TOOL_MODEL}", f"smol={MODEL}"), ctx_size=2048, parallel=4)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def embedding_server():
    """all-MiniLM-L6-v2 (BERT, mean pooling from its GGUF) and SmolLM2 (no pooling)."""
    s = Server(models=(f"minilm={EMBEDDING_MODEL}", f"smol={MODEL}"), parallel=2)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def openapi_server():
    """SmolLM2 with --pooling mean (so it also embeds) and a short context, so generated
    requests end quickly."""
    s = Server("--pooling", "mean", "--preload", models=(f"smol={MODEL}",), ctx_size=128,
               parallel=2)
    yield s
    s.stop()
