#!/usr/bin/env python3
"""Convert all-MiniLM-L6-v2 (a sentence-transformers BertModel: safetensors + tokenizer.json) to GGUF.

It writes what llama.cpp's convert_hf_to_gguf.py writes for it (class BertModel), with the `gguf`
package alone: that script needs torch and transformers, far larger than this one model. Parameters,
tensor names and types, and the WordPiece vocabulary follow it step by step; the comments say where.

usage: convert-minilm-gguf.py MODEL_DIR OUT.gguf [--outtype f16|f32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

MODEL_NAME = "all-MiniLM-L6-v2"

# llama.cpp's converter names the pre-tokenizer from a hash of the ids that the HF tokenizer gives for
# a fixed probe text. This tokenizer (bert-base-uncased's) hashes to 0876d13b…, which its table maps to
# "bert-bge" and then, the last match winning, to "jina-v2-en". llama.cpp reads the name only for BPE
# vocabularies; a WordPiece one always gets its BERT pre-tokenizer.
TOKENIZER_PRE = "jina-v2-en"

# Tensors the embedding model does not use: the position-id buffer and the unused pooler head.
SKIPPED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

# Kept in F32 whatever the outtype, as llama.cpp's converter keeps them.
F32_WEIGHTS = {gguf.TENSOR_NAMES[key] + ".weight" for key in (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)}


def tensor_type(new_name: str, data: np.ndarray, outtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """The GGML type llama.cpp's ModelBase.prepare_tensors picks: F32 for biases, norms and the tensors
    above (ggml's code for 1-D tensors and norms expects F32), the outtype for the matrices."""
    if data.ndim <= 1 or new_name.endswith("_norm.weight") or not new_name.endswith(".weight") or new_name in F32_WEIGHTS:
        return gguf.GGMLQuantizationType.F32
    return outtype


def add_tensors(writer: gguf.GGUFWriter, model_dir: Path, n_layers: int, outtype: gguf.GGMLQuantizationType) -> None:
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    tensors = load_file(model_dir / "model.safetensors")
    for name in sorted(tensors):  # the order of safe_open().keys(), which llama.cpp's converter reads
        if name in SKIPPED_TENSORS:
            continue
        new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map tensor {name!r}")
        data = tensors[name].astype(np.float32)
        qtype = tensor_type(new_name, data, outtype)
        writer.add_tensor(new_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def add_metadata(writer: gguf.GGUFWriter, model_dir: Path, config: dict, file_type: gguf.LlamaFileType) -> None:
    # ModelBase.prepare_metadata guesses more general.* keys (version, basename, organization) from the
    # directory's name and model card; only the name and size are written here, so that the file does
    # not depend on where the originals were unpacked.
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(MODEL_NAME)
    writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))

    # TextModel.set_gguf_parameters, for the keys a BERT config.json has.
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_file_type(file_type)

    # BertModel.set_gguf_parameters: an encoder, pooled as sentence-transformers' Pooling module says.
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling_type(model_dir))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def pooling_type(model_dir: Path) -> gguf.PoolingType:
    modules = json.loads((model_dir / "modules.json").read_text())
    path = next(m["path"] for m in modules if m["type"] == "sentence_transformers.models.Pooling")
    pooling = json.loads((model_dir / path / "config.json").read_text())
    if pooling["pooling_mode_mean_tokens"]:
        return gguf.PoolingType.MEAN
    if pooling["pooling_mode_cls_token"]:
        return gguf.PoolingType.CLS
    raise NotImplementedError("only MEAN and CLS pooling are supported")


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, config: dict) -> None:
    """BertModel.set_vocab: the WordPiece vocabulary in llama.cpp's phantom-space convention."""
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    by_id = {i: token for token, i in vocab.items()}
    # Every id has a token (llama.cpp's converter would fill a gap with an UNUSED "[PAD<id>]").
    assert sorted(by_id) == list(range(config["vocab_size"]))

    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(config["vocab_size"]):
        if i in special:  # [PAD] [UNK] [CLS] [SEP] [MASK], kept as written
            tokens.append(by_id[i])
            toktypes.append(gguf.TokenType.CONTROL)
        else:
            # llama.cpp's WPM tokenizer prefixes each word with U+2581 and matches greedily across the
            # whole word: a word-initial piece "foo" becomes "▁foo", a continuation "##bar" becomes "bar".
            token = by_id[i]
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            toktypes.append(gguf.TokenType.NORMAL)

    # Token types 0 ("sentence A") and 1 exist; llama.cpp always feeds 0.
    writer.add_token_type_count(config.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    # bos = [CLS], eos = sep = [SEP], unk, pad, mask, and add_bos/add_eos from the [CLS] $A [SEP]
    # template in tokenizer.json, read as llama.cpp's converter reads them. GGUF has no cls key (the
    # writer would skip it with a warning): [CLS] is the bos token.
    special_types = ("bos", "eos", "unk", "sep", "pad", "mask")
    gguf.SpecialVocab(model_dir, special_token_types=special_types, n_vocab=len(tokens)).add_to_gguf(writer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("outfile", type=Path)
    parser.add_argument("--outtype", choices=["f16", "f32"], default="f16")
    args = parser.parse_args()

    if args.outtype == "f16":
        outtype, file_type = gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16
    else:
        outtype, file_type = gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32
    config = json.loads((args.model_dir / "config.json").read_text())

    # Same order as llama.cpp's ModelBase.write: tensors, then metadata and parameters, then vocab.
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    add_tensors(writer, args.model_dir, config["num_hidden_layers"], outtype)
    add_metadata(writer, args.model_dir, config, file_type)
    add_vocab(writer, args.model_dir, config)
    writer.write_header_to_file(path=args.outfile)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
