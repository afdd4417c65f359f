"""A Hugging Face tokenizer on the device without transformers: `tokenizers` + the chat template.

The ONNX backend needs what LlamaCppBackend gets from the GGUF: token ids for text, the chat
template, the end-of-generation ids and a hash that pins the vocabulary (n-gram tables and
bundles record it, and loading refuses a table made with another tokenizer).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from tasc_edge.errors import TascError, require

# Special tokens that end an assistant turn in the common chat formats (ChatML, Llama 3,
# Gemma, Phi); llama.cpp's `llama_vocab_is_eog` uses the same kind of list.
END_OF_TURN_NAMES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
                     "</s>", "<eos>", "<|end_of_text|>")


class HFTokenizer:
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja, generation_config.json)."""

    def __init__(self, folder: str | Path) -> None:
        tokenizers = require("tokenizers", "runtime")
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TascError(f"{folder}: tokenizer.json missing")
        self.tok = tokenizers.Tokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        template_file = folder / "chat_template.jinja"
        self.chat_template: str | None = (template_file.read_text(encoding="utf-8")
                                          if template_file.is_file() else config.get("chat_template"))
        self.bos = _token_str(config.get("bos_token"))
        self.eos = _token_str(config.get("eos_token"))
        self._template = _compile(self.chat_template) if self.chat_template else None
        self.n_vocab = self.tok.get_vocab_size(with_added_tokens=True)
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        eos_ids: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            ids = _read_json(folder / name).get("eos_token_id")
            eos_ids.update(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        named = {self.tok.token_to_id(n) for n in END_OF_TURN_NAMES if n in special}
        self.stop_tokens = frozenset(i for i in eos_ids | named if i is not None)
        self.tokenizer_hash = self._hash(special)

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(list(tokens), skip_special_tokens=False)

    def render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        if self._template is None:
            return self.tokenize("\n".join(m["content"] for m in messages))
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos, eos_token=self.eos)
        return self.tokenize(text)

    def _hash(self, special: set[str]) -> str:
        h = hashlib.sha256(f"hf n_vocab={self.n_vocab}\n".encode())
        for i in range(self.n_vocab):
            t = self.tok.id_to_token(i) or ""
            h.update(f"{t}\x00{int(t in special)}\n".encode())
        return h.hexdigest()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TascError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e


def _token_str(value: object) -> str:
    if isinstance(value, dict):  # older configs store AddedToken dicts
        return str(value.get("content", ""))
    return "" if value is None else str(value)


def _compile(template: str):
    """The chat template compiled once, in a sandbox (a template is data from the bundle)."""
    require("jinja2", "runtime")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def _raise(message: str) -> None:
    raise TascError(f"chat template: {message}")
