#!/usr/bin/env python3
"""Write a tiny random-weight vision projector (mmproj GGUF) for tests of image input.

No real vision model is at hand, so this makes one that llama.cpp's libmtmd (tools/mtmd/clip.cpp)
loads and runs like any LLaVA-1.5 mmproj: projector type "mlp" (a CLIP ViT, then mm.0 -> GELU ->
mm.2), chosen as the simplest that fits a plain llama text model such as SmolLM2: its image chunk
is one run of (image_size / patch_size)^2 embeddings, with no special tokens looked up in the
text vocabulary (idefics3 needs <fake_token_around_image>, <global-img>, ... and slices the image),
no M-RoPE and causal decode. mtmd resizes any image to IMAGE_SIZE x IMAGE_SIZE (padding to a
square first), so every image gives N_IMAGE_TOKENS = 16 tokens.

The weights are random (fixed seed, normal * 0.02): the embeddings mean nothing, but they are
finite and the projector's output width is the text model's n_embd, read from --text-model.
The output is deterministic for a given gguf package version; its SHA-256 is printed.

usage: make-test-mmproj.py OUT_PATH [--text-model PATH]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import gguf
import numpy as np

SEED = 20240601
DEFAULT_TEXT_MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

# The vision tower. clip.cpp's llava graph runs the first n_layer - 1 blocks (LLaVA takes the
# features of the second-to-last layer), so 2 blocks means one block is computed.
IMAGE_SIZE = 64
PATCH_SIZE = 16
N_EMBD = 64  # vision hidden size
N_HEAD = 4
N_FF = 128  # must differ from N_EMBD: clip.cpp swaps ffn_up/ffn_down when ffn_down's ne[0] == n_embd
N_LAYER = 2
EPS = 1e-6
# OpenAI CLIP's normalisation, as LLaVA-1.5's mmproj carries it.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

N_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
N_IMAGE_TOKENS = N_PATCHES  # no class embedding, so every patch is one output token


def text_model_n_embd(path: Path) -> int:
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    return int(reader.fields[f"{arch}.embedding_length"].contents())


def build_tensors(n_embd_text: int) -> list[tuple[str, np.ndarray]]:
    """Tensors in numpy order (the reverse of ggml's ne): a Linear's weight is (out, in)."""
    rng = np.random.default_rng(SEED)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    tensors: list[tuple[str, np.ndarray]] = [
        # conv2d kernel, ggml ne = [KW, KH, IC, OC]; CLIP's patch embedding has no bias
        ("v.patch_embd.weight", w(N_EMBD, 3, PATCH_SIZE, PATCH_SIZE)),
        ("v.position_embd.weight", w(N_PATCHES, N_EMBD)),
        ("v.pre_ln.weight", ones(N_EMBD)),
        ("v.pre_ln.bias", zeros(N_EMBD)),
    ]
    for il in range(N_LAYER):
        p = f"v.blk.{il}"
        tensors += [
            (f"{p}.ln1.weight", ones(N_EMBD)),
            (f"{p}.ln1.bias", zeros(N_EMBD)),
            (f"{p}.attn_q.weight", w(N_EMBD, N_EMBD)),
            (f"{p}.attn_q.bias", zeros(N_EMBD)),
            (f"{p}.attn_k.weight", w(N_EMBD, N_EMBD)),
            (f"{p}.attn_k.bias", zeros(N_EMBD)),
            (f"{p}.attn_v.weight", w(N_EMBD, N_EMBD)),
            (f"{p}.attn_v.bias", zeros(N_EMBD)),
            (f"{p}.attn_out.weight", w(N_EMBD, N_EMBD)),
            (f"{p}.attn_out.bias", zeros(N_EMBD)),
            (f"{p}.ln2.weight", ones(N_EMBD)),
            (f"{p}.ln2.bias", zeros(N_EMBD)),
            (f"{p}.ffn_up.weight", w(N_FF, N_EMBD)),
            (f"{p}.ffn_up.bias", zeros(N_FF)),
            (f"{p}.ffn_down.weight", w(N_EMBD, N_FF)),
            (f"{p}.ffn_down.bias", zeros(N_EMBD)),
        ]
    # The LLaVA-1.5 projector. clip.cpp loads mm.* as optional, but the mlp graph adds mm.0.bias
    # unconditionally and clip_n_mmproj_embd reads mm.2.weight: all four are needed.
    tensors += [
        ("mm.0.weight", w(n_embd_text, N_EMBD)),
        ("mm.0.bias", zeros(n_embd_text)),
        ("mm.2.weight", w(n_embd_text, n_embd_text)),
        ("mm.2.bias", zeros(n_embd_text)),
    ]
    return tensors


def write(out: Path, n_embd_text: int) -> None:
    writer = gguf.GGUFWriter(out, "clip")  # general.architecture = "clip"
    writer.add_name("hearth test mmproj")
    writer.add_description(
        f"random-weight LLaVA-style (mlp) vision projector for tests, n_embd {n_embd_text}, seed {SEED}"
    )
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_audio_encoder", False)
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", N_EMBD)
    writer.add_uint32("clip.vision.feed_forward_length", N_FF)
    writer.add_uint32("clip.vision.projection_dim", n_embd_text)
    writer.add_uint32("clip.vision.block_count", N_LAYER)
    writer.add_uint32("clip.vision.attention.head_count", N_HEAD)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", EPS)
    writer.add_array("clip.vision.image_mean", IMAGE_MEAN)
    writer.add_array("clip.vision.image_std", IMAGE_STD)
    writer.add_bool("clip.use_gelu", False)  # CLIP's quick GELU in the ViT blocks
    for name, data in build_tensors(n_embd_text):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT_PATH")
    parser.add_argument("--text-model", type=Path, default=Path(DEFAULT_TEXT_MODEL),
                        help=f"GGUF text model whose n_embd the projector outputs (default: {DEFAULT_TEXT_MODEL})")
    args = parser.parse_args()

    n_embd_text = text_model_n_embd(args.text_model)
    write(args.out, n_embd_text)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {args.out.stat().st_size} bytes, {N_IMAGE_TOKENS} tokens per image, "
          f"n_embd {n_embd_text}")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
