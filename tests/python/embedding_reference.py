"""A numpy reference for all-MiniLM-L6-v2 sentence embeddings, to check hearth's /v1/embeddings against.

It reads the original sentence-transformers files, which scripts/fetch-embedding-model.sh keeps in
models/all-MiniLM-L6-v2/, and computes what SentenceTransformer("all-MiniLM-L6-v2").encode() returns:
WordPiece tokens with [CLS] ... [SEP], truncated to max_seq_length (256), the 6-layer BERT encoder,
mean pooling over the tokens and L2 normalisation.

Each sentence runs alone, so there is no padding: sentence-transformers pads a batch and masks the
padding out of attention and pooling, which gives the same vectors. The arithmetic is float64, so the
reference's own rounding is negligible next to the float32/F16 implementations it checks. It gives,
to the 4 decimals published, the similarity matrix of sentence-transformers' quickstart ("The weather
is lovely today.", "It's so sunny outside!", "He drove to the stadium.": 0.6660, 0.1046, 0.1411).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "all-MiniLM-L6-v2"


def model_dir() -> Path:
    """The extracted original model, or FileNotFoundError naming the script that fetches it."""
    if not (MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"{MODEL_DIR} is missing: run scripts/fetch-embedding-model.sh")
    return MODEL_DIR


# HF BERT's "gelu" is the exact erf form, not the tanh approximation; numpy has no erf of its own.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class MiniLM:
    def __init__(self, path: Path):
        config = json.loads((path / "config.json").read_text())
        self.n_layers = config["num_hidden_layers"]
        self.n_heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        self.w = {name: t.astype(np.float64) for name, t in load_file(path / "model.safetensors").items()}

        self.max_tokens = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # tokenizer.json itself pads to and truncates at 128 tokens; sentence-transformers overrides both.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)

    def token_ids(self, sentence: str) -> list[int]:
        """[CLS] + WordPiece ids + [SEP], at most max_seq_length of them."""
        return self.tokenizer.encode(sentence).ids

    def _linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        # torch's Linear stores weight as (out, in).
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def _norm(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{prefix}.weight"], self.w[f"{prefix}.bias"], self.eps)

    def _attention(self, x: np.ndarray, prefix: str) -> np.ndarray:
        n_tokens, width = x.shape
        head_dim = width // self.n_heads

        def heads(t: np.ndarray) -> np.ndarray:  # (tokens, width) -> (heads, tokens, head_dim)
            return t.reshape(n_tokens, self.n_heads, head_dim).transpose(1, 0, 2)

        q = heads(self._linear(x, f"{prefix}.self.query"))
        k = heads(self._linear(x, f"{prefix}.self.key"))
        v = heads(self._linear(x, f"{prefix}.self.value"))
        # Bidirectional: every token attends to every token of its sentence.
        weights = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(head_dim))
        context = (weights @ v).transpose(1, 0, 2).reshape(n_tokens, width)
        return self._linear(context, f"{prefix}.output.dense")

    def token_states(self, ids: list[int]) -> np.ndarray:
        """The encoder's last hidden state, one row per token."""
        # Token type 0 ("sentence A") for every token, as for a single sentence.
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][: len(ids)]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        for i in range(self.n_layers):
            layer = f"encoder.layer.{i}"
            x = self._norm(x + self._attention(x, f"{layer}.attention"), f"{layer}.attention.output.LayerNorm")
            hidden = _gelu(self._linear(x, f"{layer}.intermediate.dense"))
            x = self._norm(x + self._linear(hidden, f"{layer}.output.dense"), f"{layer}.output.LayerNorm")
        return x

    def embed_one(self, sentence: str) -> np.ndarray:
        pooled = self.token_states(self.token_ids(sentence)).mean(axis=0)  # [CLS] and [SEP] included
        return pooled / max(np.linalg.norm(pooled), 1e-12)  # torch.nn.functional.normalize's eps


@lru_cache(maxsize=1)
def model() -> MiniLM:
    return MiniLM(model_dir())


def embed(sentences: list[str]) -> np.ndarray:
    """Unit-length sentence embeddings, shape (len(sentences), 384), float64."""
    return np.stack([model().embed_one(s) for s in sentences])


def token_count(sentence: str) -> int:
    """Tokens the model sees for `sentence`: [CLS] and [SEP] included, at most max_seq_length (256)."""
    return len(model().token_ids(sentence))
