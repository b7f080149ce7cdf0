"""Reading the JSON files of a model directory (config, generation config, tokenizer config)."""

from __future__ import annotations

import json
import os


def read_json_object(path: str, required: bool = True) -> dict:
    """The JSON object in `path`; {} for a missing optional file.

    Raises FileNotFoundError for a missing required file and ValueError for a file that is not
    valid JSON or does not hold an object.
    """
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"missing {path}")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return value
