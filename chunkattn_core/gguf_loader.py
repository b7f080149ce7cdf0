"""Reads a llama.cpp GGUF file: config, dequantised fp32 weights under Hugging Face names, tokenizer.

llama.cpp's converter stores Q and K projection rows permuted for its interleaved rotary layout
(``w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)``); the weights returned here are
permuted back, so the model applies RoPE with Hugging Face's ``rotate_half`` convention.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from chunkattn_core.model_config import ModelConfig
from chunkattn_core.tokenizer import Tokenizer

# GGUF per-block tensor name -> Hugging Face Llama name (N is the layer index)
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_PATTERN = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def load_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, fp32 weights (Hugging Face Llama names, Q/K un-permuted) and tokenizer of a GGUF file.

    Raises FileNotFoundError for a missing file and ValueError for anything that is not a readable
    GGUF of a Llama-architecture model with a byte-level BPE tokenizer.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    reader = _open_reader(path)
    metadata = read_metadata(reader, path)
    config = config_from_metadata(metadata, {t.name for t in reader.tensors}, path)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    weights = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, path)
        weight = _dequantize(tensor, path)
        if name.endswith("q_proj.weight"):
            weight = unpermute_rotary(weight, config.num_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rotary(weight, config.num_kv_heads)
        weights[name] = weight
    return config, weights, tokenizer


def read_metadata(reader, path: str = "<gguf>") -> dict:
    """Every key-value field of a GGUF reader as plain Python values (str, int, float, lists)."""
    metadata = {}
    for key, field in reader.fields.items():
        try:
            metadata[key] = field.contents()
        except Exception as exc:
            raise ValueError(f"{path}: cannot read GGUF metadata field {key!r}: {exc}") from exc
    return metadata


def config_from_metadata(metadata: dict, tensor_names: set[str], path: str = "<gguf>") -> ModelConfig:
    """ModelConfig from the ``llama.*`` keys of a GGUF file."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; only 'llama' is supported")

    def required(key: str):
        if f"llama.{key}" not in metadata:
            raise ValueError(f"{path}: GGUF metadata lacks 'llama.{key}'")
        return metadata[f"llama.{key}"]

    hidden_size = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(metadata.get("llama.attention.head_count_kv", num_heads))
    head_dim = int(metadata.get("llama.attention.key_length", hidden_size // max(num_heads, 1)))
    rope_dims = int(metadata.get("llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(
            f"{path}: partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported"
        )
    if "rope_freqs.weight" in tensor_names:
        raise ValueError(
            f"{path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 scaling) are not supported"
        )
    rope_scaling = None
    scaling_type = metadata.get("llama.rope.scaling.type", "none")
    if scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(metadata["llama.rope.scaling.factor"])}
    elif scaling_type != "none":
        raise ValueError(f"{path}: unsupported RoPE scaling {scaling_type!r}")
    tokens = metadata.get("tokenizer.ggml.tokens") or ()
    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(metadata.get("llama.vocab_size", len(tokens))),
        hidden_size=hidden_size,
        num_layers=int(required("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=int(required("feed_forward_length")),
        rope_theta=float(metadata.get("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(metadata.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(metadata.get("llama.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos_id is None else (eos_id,),
        rope_scaling=rope_scaling,
        name=str(metadata.get("general.name", os.path.basename(path))),
    )


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's Q/K row permutation: [num_heads * head_dim, in] -> same shape."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
        .contiguous()
    )


def _open_reader(path: str):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct/numpy errors... on bad files
        raise ValueError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc


def _hf_name(name: str, path: str) -> str:
    match = _BLOCK_PATTERN.match(name)
    if match:
        layer, part, kind = match.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    else:
        base, _, kind = name.rpartition(".")
        if base in _GLOBAL_NAMES and kind in ("weight", "bias"):
            return f"{_GLOBAL_NAMES[base]}.{kind}"
    raise ValueError(f"{path}: unexpected tensor {name!r} for a Llama model")


def _dequantize(tensor, path: str) -> torch.Tensor:
    from gguf.quants import dequantize

    # GGUF lists dims fastest-first; numpy (and torch) order is the reverse
    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        array = dequantize(tensor.data, tensor.tensor_type)
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot dequantise {tensor.name} ({tensor.tensor_type.name}): {exc}"
        ) from exc
    # a copy: F32/F16 tensors come back as read-only views of the memory-mapped file
    array = np.array(array, dtype=np.float32, order="C", copy=True)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: tensor {tensor.name} holds {array.size} values, expected shape {shape}")
    return torch.from_numpy(array.reshape(shape))
