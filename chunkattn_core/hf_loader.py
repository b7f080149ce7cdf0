"""Reads a local Hugging Face Llama-family checkpoint directory.

Expected files: config.json (model_type "llama"), model.safetensors or sharded
model-*.safetensors with model.safetensors.index.json, tokenizer.json, and optionally
tokenizer_config.json / chat_template.jinja / generation_config.json. Nothing is downloaded.
"""

from __future__ import annotations

import glob
import os

import torch

from chunkattn_core.json_files import read_json_object
from chunkattn_core.model_config import ModelConfig
from chunkattn_core.tokenizer import Tokenizer

SUPPORTED_MODEL_TYPES = ("llama",)
_INDEX_FILE = "model.safetensors.index.json"


def load_hf_dir(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, weights (as stored, Hugging Face names) and tokenizer of a checkpoint directory.

    Raises FileNotFoundError when a required file is missing and ValueError when a file is
    malformed or describes a model that is not a Llama.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"{path} has no config.json: expected a Hugging Face Llama checkpoint directory "
            "(config.json + *.safetensors + tokenizer.json) or a path to a .gguf file"
        )
    generation = read_json_object(os.path.join(path, "generation_config.json"), required=False)
    config = config_from_hf(read_json_object(config_file), generation, config_file)
    tokenizer = Tokenizer.from_pretrained_dir(path, extra_eos_token_ids=config.eos_token_ids)
    if tokenizer.bos_token_id is None and config.bos_token_id is not None:
        tokenizer.bos_token_id = config.bos_token_id
    weights = _load_safetensors(path)
    return config, weights, tokenizer


def config_from_hf(raw: dict, generation: dict | None = None, source: str = "config.json") -> ModelConfig:
    """ModelConfig from the fields of a Hugging Face LlamaConfig (config.json)."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key not in raw:
            raise ValueError(f"{source}: missing {key!r}")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise ValueError(f"{source}: attention/MLP biases are not supported")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
    num_heads = raw["num_attention_heads"]
    rope = raw.get("rope_parameters") or {}  # transformers >= 5 nests rope_theta and scaling here
    rope_theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_scaling = raw.get("rope_scaling") or (
        rope if rope.get("rope_type", "default") != "default" else None
    )
    if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
        rope_scaling = None
    eos = [*_id_list(raw.get("eos_token_id")), *_id_list((generation or {}).get("eos_token_id"))]
    try:
        return ModelConfig(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
            intermediate_size=raw["intermediate_size"],
            rope_theta=float(rope_theta),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=tuple(dict.fromkeys(eos)),
            rope_scaling=rope_scaling,
            name=str(raw.get("_name_or_path") or os.path.basename(os.path.dirname(os.path.abspath(source)))),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from exc


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index_file = os.path.join(path, _INDEX_FILE)
    if os.path.isfile(index_file):
        weight_map = read_json_object(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_file}: missing or empty 'weight_map'")
        files = sorted({os.path.join(path, name) for name in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"{index_file} names missing shard(s): {', '.join(missing)}")
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(
                f"{path} has no *.safetensors weights (pytorch .bin files are not supported)"
            )
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            weights.update(load_file(file))
        except Exception as exc:
            raise ValueError(f"cannot read {file}: {exc}") from exc
    return weights


def _id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
