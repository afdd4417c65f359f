"""llama.cpp target backend (llama-cpp-python's low-level API).

`Llama` loads the GGUF, its tokenizer and chat template; the decode loop talks to the context
directly: one `llama_decode` per forward with logits requested for every row, and
`llama_memory_seq_rm` to roll the KV cache back (~17 us here, exact).

Exactness needs a k-token forward to give bit for bit the logits of k one-token forwards.
Two llama.cpp settings decide it (measured here, llama.cpp in llama-cpp-python 0.3.36):
* flash attention on - without it batched rows differ by up to 0.9 in logits;
* a quantized (Q8_0) KV cache - with the default F16 cache the CPU flash-attention kernel
  sends a *single* query over >= 512 KV cells down a split-KV path (cells chunked across
  threads, partial softmaxes reduced; ggml-cpu/ops.cpp, `use_split_kv_path`), while a
  multi-token batch takes the one-chunk path, so plain and speculative decoding diverge once
  the context passes ~255 tokens. Both special paths require K and V of the same F16/F32
  type, so a Q8_0 K cache with an F16 V cache keeps every query row on one path. Measured
  here (snips, 12 rows, q4_0 weights): plain 103 tok/s with q8_0/f16, 103 with the default
  f16/f16 (inexact), 93 with q8_0/q8_0; both quantized variants are bit-exact.
`check_exact_batching` (runtime.run) verifies invariance at a short and a long position.

Prompt-prefix reuse: task prompts share long templates (few-shot examples, schemas, tool
lists), so `prefill` keeps the cached KV of the longest common prefix with what is already in
the cache and decodes only the rest, as llama-cpp-python's `Llama.generate` does. It is exact
for the same reason batched verification is: with the Q8_0 K cache a row's logits do not
depend on how the sequence was split into batches. (With the default F16 cache they do:
llama-cpp-python's own prefix reuse changed a greedy snips output from 128 tokens to 5.)
With a `PrefixCache` the same reuse reaches back past the last prompt: a snapshot is the
sequence's state blob (`llama_state_seq_get_data`: its KV cells, copied out), restored with
`llama_state_seq_set_data` and cut to the shared length.

AMX: a llama.cpp built with `-march=native` on an Intel CPU with AMX (Sapphire Rapids and
later, the CI machines here since December 2026) puts quantized weights in its AMX buffer type,
and `ggml_backend_amx_mul_mat` segfaults on the first decode (upstream llama.cpp #20824; every
model we load, tiny or SmolLM2). `open_llama` loads such a build with llama.cpp's extra buffer
types off (AMX and the repacked Q4_0 layout go together) and says so once; the README's install
command builds without AMX (scripts/llama-no-amx.cmake), which keeps the repacked kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from tasc_edge.decode import common_prefix_length
from tasc_edge.errors import TascError, require
from tasc_edge.prefix_cache import PrefixCache
from tasc_edge.tasks import end_of_turn_token

KV_TYPES = {"f16": 1, "q8_0": 8}  # enum ggml_type


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def has_amx(system_info: str) -> bool:
    """Does this llama.cpp build carry AMX kernels (`llama_print_system_info`)?"""
    return "AMX_INT8 = 1" in system_info


def open_llama(lib, **kwargs):
    """`lib.Llama(**kwargs)`, with llama.cpp's extra buffer types off when the build has AMX
    (see the module docstring). Llama() takes no argument for llama_model_params'
    `use_extra_bufts`: it reads llama_model_default_params() once in __init__, so for the
    length of that call it is given defaults with the field cleared."""
    if not has_amx(lib.llama_print_system_info().decode(errors="replace")):
        return lib.Llama(**kwargs)
    print("tasc-edge: this llama-cpp-python build has AMX kernels, which crash here (llama.cpp "
          "#20824): loading without extra buffer types (slower); reinstall it with "
          "CMAKE_ARGS=\"-DCMAKE_PROJECT_INCLUDE=$PWD/scripts/llama-no-amx.cmake\" for full speed",
          file=sys.stderr)
    module = sys.modules["llama_cpp.llama_cpp"]
    default = module.llama_model_default_params

    def without_extra_bufts():
        params = default()
        params.use_extra_bufts = False
        return params

    with contextlib.ExitStack() as undo:
        module.llama_model_default_params = without_extra_bufts
        undo.callback(setattr, module, "llama_model_default_params", default)
        return lib.Llama(**kwargs)


def save_seq_state(lib, ctx) -> ctypes.Array:
    """Sequence 0's state (its KV cells) copied out of a llama.cpp context."""
    size = lib.llama_state_seq_get_size(ctx, 0)
    blob = (ctypes.c_uint8 * size)()
    lib.llama_state_seq_get_data(ctx, blob, size, 0)
    return blob


def load_seq_state(lib, ctx, blob: ctypes.Array) -> None:
    """Replace sequence 0 of a llama.cpp context by a `save_seq_state` blob."""
    lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), 0, 0, -1)
    if lib.llama_state_seq_set_data(ctx, blob, len(blob), 0) == 0:
        raise RuntimeError("llama_state_seq_set_data could not restore a cached prefix")


class LlamaCppBackend:
    """Backend protocol (prefill / forward / rollback) plus the model's tokenizer and template."""

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, kv_type: str = "q8_0/f16", reuse_prefix: bool = True,
                 input_embeddings: np.ndarray | None = None) -> None:
        """`input_embeddings` [n_vocab, n_embd]: feed rows of it (llama_batch.embd) instead of
        token ids - a VocabTrim drafter GGUF, whose own vocabulary is its K kept ids, reads
        target-vocabulary inputs this way (export/gguf_drafter.py)."""
        self._lib = require("llama_cpp", "runtime")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise TascError(f"model file not found: {model_path}")
        threads = n_threads or physical_cores()
        type_k, _, type_v = kv_type.partition("/")  # "q8_0" = both; "f16/q8_0" = K f16, V q8_0
        type_v = type_v or type_k
        if type_k not in KV_TYPES or type_v not in KV_TYPES:
            raise TascError(f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_TYPES)} "
                            "or K/V, e.g. f16/q8_0")
        self.llm = open_llama(self._lib, model_path=str(model_path), n_ctx=n_ctx, n_batch=n_batch,
                              n_ubatch=n_batch, n_threads=threads, n_threads_batch=threads,
                              flash_attn=True, type_k=KV_TYPES[type_k],
                              type_v=KV_TYPES[type_v], logits_all=False, verbose=False)
        self.model_path = model_path
        self.kv_type, self.type_k, self.type_v = kv_type, type_k, type_v
        self.n_threads = threads
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.n_batch = n_batch
        self.n_past = 0
        self.reuse_prefix = reuse_prefix
        self.reused_tokens = 0  # prompt tokens the last prefill took from the cache
        self._cached: list[int] = []  # token at each cache position 0..n_past-1
        self._ctx = self.llm.ctx
        self._memory = self._lib.llama_get_memory(self._ctx)
        self._vocab = self._lib.llama_model_get_vocab(self.llm.model)
        self._embd = input_embeddings
        if input_embeddings is not None and input_embeddings.shape[1] != self.llm.n_embd():
            raise TascError(f"{model_path}: input embeddings of width {input_embeddings.shape[1]}, "
                            f"the model's is {self.llm.n_embd()}")
        self._batch = self._lib.llama_batch_init(n_batch, 0 if input_embeddings is None else self.llm.n_embd(), 1)
        self.stop_tokens, self.tokenizer_hash = self._scan_vocab()
        self.prefix_cache: PrefixCache | None = None  # attach one to reuse earlier prompts
        self.n_embd = self.llm.n_embd()
        # keep_hidden: forward() also keeps each row's final hidden state in `hidden` (a
        # HiddenHeadDrafter reads it). Off during prefill: llama.cpp would then output every
        # prompt row, logits included.
        self.has_hidden = True
        self.keep_hidden = False
        self.hidden: np.ndarray | None = None
        self._embeddings_on = False

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self.llm.close()

    def __enter__(self) -> "LlamaCppBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend protocol --------------------------------------------------------------------
    def prefill(self, tokens: Sequence[int]) -> None:
        keep = common_prefix_length(self._cached, tokens) if self.reuse_prefix else 0
        hit = self.prefix_cache.lookup(tokens) if self.prefix_cache is not None else None
        if hit is not None and hit.tokens > keep:
            blob, cached = hit.snapshot
            load_seq_state(self._lib, self._ctx, blob)
            self._cached, keep = list(cached), hit.tokens
        self._lib.llama_memory_seq_rm(self._memory, 0, keep, -1)
        self.n_past, self.reused_tokens = keep, keep
        del self._cached[keep:]
        self._set_embeddings(False)
        self.hidden = None
        for i in range(keep, len(tokens), self.n_batch):
            self._decode(tokens[i : i + self.n_batch], all_logits=False)
        if self.prefix_cache is not None and (hit is None or hit.tokens < len(tokens)) \
                and not self.prefix_cache.frozen:
            blob = save_seq_state(self._lib, self._ctx)
            self.prefix_cache.store(tokens, (blob, tuple(self._cached)), len(blob))

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one token")
        if len(tokens) > self.n_batch:
            raise TascError(f"forward over {len(tokens)} tokens exceeds n_batch={self.n_batch}")
        self._set_embeddings(self.keep_hidden)
        self._decode(tokens, all_logits=True)
        if self.keep_hidden:
            ptr = self._lib.llama_get_embeddings(self._ctx)
            self.hidden = np.ctypeslib.as_array(ptr, shape=(len(tokens), self.n_embd)).copy()
        ptr = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(tokens), self.n_vocab)).copy()

    def _set_embeddings(self, on: bool) -> None:
        if on != self._embeddings_on:
            self._lib.llama_set_embeddings(self._ctx, on)
            self._embeddings_on = on

    def rollback(self, n: int) -> None:
        if n > 0:
            self.n_past -= n
            del self._cached[self.n_past:]
            self._lib.llama_memory_seq_rm(self._memory, 0, self.n_past, -1)

    def _decode(self, tokens: Sequence[int], all_logits: bool) -> None:
        if self.n_past + len(tokens) > self.n_ctx:
            raise TascError(f"context full: {self.n_past} + {len(tokens)} tokens > n_ctx {self.n_ctx}")
        b = self._batch
        b.n_tokens = len(tokens)
        if self._embd is not None:
            rows = np.ascontiguousarray(self._embd[np.asarray(tokens, dtype=np.int64)], dtype=np.float32)
            ctypes.memmove(b.embd, rows.ctypes.data, rows.nbytes)
        for i, t in enumerate(tokens):
            if self._embd is None:
                b.token[i] = int(t)
            b.pos[i] = self.n_past + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = all_logits or i == len(tokens) - 1
        rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            self._cached = self._cached[: self.n_past]  # what the failed batch left is unknown
            self._lib.llama_memory_seq_rm(self._memory, 0, self.n_past, -1)
            raise RuntimeError(f"llama_decode returned {rc}")
        self._cached.extend(int(t) for t in tokens)
        self.n_past += len(tokens)

    # -- tokenizer and chat template ---------------------------------------------------------
    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text` with no BOS (for corpus outputs and templated prompts)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        # not llm.detokenize: llama-cpp-python reads each piece into a 32-byte buffer and
        # silently drops longer ones - TASC-ft's added tokens (e.g. '", "quantity": ') among them
        out = bytearray()
        buf = ctypes.create_string_buffer(64)
        for t in tokens:
            n = self._lib.llama_token_to_piece(self._vocab, int(t), buf, len(buf), 0, False)
            if n < 0:  # -n = the size it needs
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, int(t), buf, len(buf), 0, False)
            out += buf.raw[:n]
        return out.decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self._lib.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def chat_prompt(self, user_message: str) -> list[int]:
        """The GGUF's own chat template around one user turn, ready for generation."""
        return self._render([{"role": "user", "content": user_message}], add_generation_prompt=True)

    def chat_messages(self, messages: list[dict]) -> list[int]:
        """A whole conversation in the chat template, ready for the assistant's turn."""
        return self._render(messages, add_generation_prompt=True)

    def end_of_turn(self) -> int:
        """The token closing an assistant turn in the GGUF's template (else the vocab's EOS)."""
        token = end_of_turn_token(self._render, self.stop_tokens)
        return int(self._lib.llama_vocab_eos(self._vocab)) if token is None else token

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        template = self.llm.metadata.get("tokenizer.chat_template")
        bos_id = self._lib.llama_vocab_bos(self._vocab)
        eos_id = self._lib.llama_vocab_eos(self._vocab)
        bos = self.token_text(bos_id) if bos_id >= 0 else ""
        eos = self.token_text(eos_id) if eos_id >= 0 else ""
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            text = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                       add_generation_prompt=add_generation_prompt)(
                messages=messages).prompt
        else:  # no template in the file: plain text continuation
            text = "\n".join(m["content"] for m in messages)
        ids = self.tokenize(text, special=True)
        if self._lib.llama_vocab_get_add_bos(self._vocab) and bos_id >= 0 and not text.startswith(bos):
            ids = [bos_id, *ids]
        return ids

    def _scan_vocab(self) -> tuple[frozenset[int], str]:
        """End-of-generation ids, and a hash of the whole vocabulary (text + type per id)."""
        stops, h = [], hashlib.sha256()
        h.update(f"n_vocab={self.n_vocab}\n".encode())
        get_text, get_attr = self._lib.llama_vocab_get_text, self._lib.llama_vocab_get_attr
        for i in range(self.n_vocab):
            h.update(get_text(self._vocab, i) or b"")
            h.update(f"\x00{int(get_attr(self._vocab, i))}\n".encode())
            if self._lib.llama_vocab_is_eog(self._vocab, i):
                stops.append(i)
        return frozenset(stops), h.hexdigest()

