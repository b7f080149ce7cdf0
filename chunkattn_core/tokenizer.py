"""Tokenizer: byte-level BPE (``tokenizers``) plus the model's Jinja chat template.

Built either from GGUF metadata (``tokenizer.ggml.*`` keys, as llama.cpp writes them) or from a
Hugging Face directory (tokenizer.json, tokenizer_config.json, chat_template.jinja). Tokens the
file marks as control (``<|im_start|>``...) are special: they encode as one id wherever they occur
in the text and ``decode(..., skip_special_tokens=True)`` drops them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from chunkattn_core.json_files import read_json_object

# Tokens that end an assistant turn in common chat formats; added to eos_token_ids when special.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "</s>")

_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> split regex; anything else gets GPT-2's byte-level split (as transformers does)
_GGUF_PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
}


class Tokenizer:
    """Text <-> token ids, and chat messages -> prompt text.

    Parameters
    ----------
    backend : tokenizers.Tokenizer
        Encodes and decodes; its post-processor decides what ``add_special_tokens=True`` adds.
    chat_template : str, optional
        Jinja source rendered with ``messages``, ``add_generation_prompt`` and the special tokens.
    bos_token_id, eos_token_id : int, optional
        The file's BOS and EOS (their text is ``bos_token``/``eos_token`` in the template).
    extra_eos_token_ids : iterable of int
        More ids that end generation; special end-of-turn tokens (``<|im_end|>``...) are added too.
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        chat_template: str | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        extra_eos_token_ids=(),
    ):
        self._backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.eos_token_ids: set[int] = {int(t) for t in extra_eos_token_ids}
        if eos_token_id is not None:
            self.eos_token_ids.add(eos_token_id)
        for token in END_OF_TURN_TOKENS:
            token_id = backend.token_to_id(token)
            if token_id is not None and token_id in self._special_ids():
                self.eos_token_ids.add(token_id)
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Builds the tokenizer a GGUF file describes; metadata maps GGUF keys to Python values."""
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"unsupported GGUF tokenizer {kind!r}: only byte-level BPE ('gpt2') is supported"
            )
        tokens = list(metadata.get("tokenizer.ggml.tokens") or ())
        merges = list(metadata.get("tokenizer.ggml.merges") or ())
        if not tokens or not merges:
            raise ValueError("GGUF file lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
        vocab = {token: index for index, token in enumerate(tokens)}
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
        backend = BackendTokenizer(bpe)
        split = _GGUF_PRE_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
        if split is None:
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        backend.decoder = decoders.ByteLevel()
        token_types = list(metadata.get("tokenizer.ggml.token_type") or ())
        if token_types and len(token_types) != len(tokens):
            raise ValueError(f"GGUF file has {len(token_types)} token types for {len(tokens)} tokens")
        special = [t for t, kind in zip(tokens, token_types, strict=False) if kind == _GGUF_CONTROL]
        user_defined = [t for t, kind in zip(tokens, token_types, strict=False) if kind == _GGUF_USER_DEFINED]
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])

        bos_id = metadata.get("tokenizer.ggml.bos_token_id")
        if metadata.get("tokenizer.ggml.add_bos_token") and bos_id is not None:
            bos = tokens[bos_id]
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
            )
        return cls(
            backend,
            chat_template=metadata.get("tokenizer.chat_template"),
            bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike, extra_eos_token_ids=()) -> Tokenizer:
        """Loads tokenizer.json (+ tokenizer_config.json, chat_template.jinja) from a local directory."""
        path = os.fspath(path)
        tokenizer_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(f"{path} has no tokenizer.json (only fast-tokenizer files are supported)")
        try:
            backend = BackendTokenizer.from_file(tokenizer_file)
        except Exception as exc:
            raise ValueError(f"cannot read {tokenizer_file}: {exc}") from exc
        config = read_json_object(os.path.join(path, "tokenizer_config.json"), required=False)
        chat_template = config.get("chat_template")
        if isinstance(chat_template, list):  # [{"name": ..., "template": ...}]
            named = {item.get("name"): item.get("template") for item in chat_template}
            chat_template = named.get("default") or next(iter(named.values()), None)
        template_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(template_file):
            with open(template_file, encoding="utf-8") as f:
                chat_template = f.read()

        def token_id(name: str) -> int | None:
            token = config.get(name)
            if isinstance(token, dict):
                token = token.get("content")
            return backend.token_to_id(token) if isinstance(token, str) else None

        return cls(
            backend,
            chat_template,
            bos_token_id=token_id("bos_token"),
            eos_token_id=token_id("eos_token"),
            extra_eos_token_ids=extra_eos_token_ids,
        )

    # ---- public API ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text; special tokens written in the text become their single ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids (special tokens dropped unless skip_special_tokens is False)."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Renders chat messages [{"role": ..., "content": ...}] to prompt text with the model's template."""
        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        for message in messages:
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise ValueError(f"each message needs a string 'role', got {message!r}")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"each message needs a string 'content', got {message!r}")
        return self._template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self._token_text(self.bos_token_id),
            eos_token=self._token_text(self.eos_token_id),
        )

    # ---- private helpers ----------------------------------------------------------------------

    def _special_ids(self) -> set[int]:
        return {i for i, token in self._backend.get_added_tokens_decoder().items() if token.special}

    def _token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else self._backend.id_to_token(token_id) or ""


def _compile_template(source: str) -> jinja2.Template:
    """Compiles a chat template the way transformers does (sandboxed, same globals and filters)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"malformed chat template: {exc}") from exc
