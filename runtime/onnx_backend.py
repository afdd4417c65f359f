"""onnxruntime target backend: a decoder exported with its KV cache (optimum's
`text-generation-with-past`: inputs input_ids, attention_mask, position_ids, past_key_values.*;
outputs logits, present.*).

The past is kept as numpy arrays [1, kv_heads, length, head_dim] per layer; rollback slices
the length axis (free), a forward over k tokens returns the grown `present` arrays.

Exactness. ONNX Runtime's CPU MatMul (MLAS) computes a one-row product on a GEMV path and
anything from two rows up on the GEMM path; the two differ in the last bits (measured here on
SmolLM2 fp32 / int8 / int4: one-row logits differ from batched rows by 4e-5 to 0.7, while
splits into 2..12-row forwards are bit-identical). So this backend never runs a one-row
forward: a single token is padded with a throwaway second row, whose logits are dropped and
whose KV entry is trimmed. Plain decoding pays for that pad; `min_rows=1` turns it off (and
with it exactness), which the bench runs as the unpadded plain baseline so the padded one is
never the only yardstick. `check_exact_batching` verifies invariance at load time.

Prompt prefixes: `prefill` keeps the longest common prefix with what is cached, and with a
`PrefixCache` (tasc_edge.prefix_cache) also with earlier prompts. A snapshot is the list of
past arrays itself - never written in place (each forward returns new arrays, a trim copies),
so keeping one costs no copy; restoring a shorter prefix copies the slice, as a rollback does.
Exact by the same batching invariance: a prompt split at the cached length gives the logits
of the whole prompt (a one-token remainder is padded like any other forward).

Threads: `session.intra_op.allow_spinning=0` by default: on a 2-core device that shares its
cores (the OS, the app), spinning workers halved step time under load here. On a quiet
device spinning is faster (int8 SmolLM2: t(1) 12.6 vs 16.0 ms): `--onnx-spin`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tasc_edge.decode import common_prefix_length
from tasc_edge.errors import TascError, require
from tasc_edge.prefix_cache import PrefixCache
from tasc_edge.tasks import end_of_turn_token
from tasc_edge.runtime.hf_tokenizer import HFTokenizer
from tasc_edge.runtime.llama_backend import physical_cores  # llama_cpp itself is imported lazily


# a graph exported with its input embedding table moved out (export/onnx.py) finds the table
# here, next to model.onnx, unless one is passed (the drafters of a bundle share theirs)
EMBED_FILE = "embed.npy"
HIDDEN_OUTPUT = "hidden"  # the final hidden states a target graph may also output (export/onnx.py)


class OnnxBackend:
    """Backend protocol (prefill / forward / rollback) plus tokenizer and chat template."""

    def __init__(self, model_path: str | Path, n_ctx: int | None = None, n_threads: int | None = None,
                 min_rows: int = 2, spinning: bool = False, reuse_prefix: bool = True,
                 n_batch: int = 512, input_embeddings: np.ndarray | None = None) -> None:
        """`input_embeddings` [n_vocab, hidden]: for a graph exported with its embedding moved
        out (export/onnx.py move_embedding_out), the table whose rows feed `inputs_embeds`
        (default: EMBED_FILE next to the model, memory-mapped)."""
        ort = require("onnxruntime", "runtime")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise TascError(f"model file not found: {model_path}")
        folder = model_path.parent
        so = ort.SessionOptions()
        self.n_threads = n_threads or physical_cores()
        so.intra_op_num_threads = self.n_threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        if not ({"input_ids", "inputs_embeds"} & set(inputs)) or not self._layers:
            raise TascError(f"{model_path}: not a decoder exported with past key values "
                            "(export with task text-generation-with-past)")
        if "inputs_embeds" in inputs and input_embeddings is None and (folder / EMBED_FILE).is_file():
            input_embeddings = np.load(folder / EMBED_FILE, mmap_mode="r", allow_pickle=False)
        self._embd = input_embeddings
        if ("inputs_embeds" in inputs) != (input_embeddings is not None):
            raise TascError(f"{model_path}: " + (f"its inputs are embeddings and there is no {EMBED_FILE} "
                            "next to it: pass the table it was exported with" if input_embeddings is None
                            else "takes input ids, not embeddings"))
        if input_embeddings is not None and input_embeddings.shape[1] != inputs["inputs_embeds"].shape[-1]:
            raise TascError(f"{model_path}: input embeddings of width {input_embeddings.shape[1]}, the "
                            f"model takes {inputs['inputs_embeds'].shape[-1]}")
        self._feed_ids = "input_ids" in inputs
        kv = inputs["past_key_values.0.key"]
        self._kv_heads, self._head_dim = int(kv.shape[1]), int(kv.shape[3])
        self._kv_dtype = np.float16 if "float16" in kv.type else np.float32
        self._position_ids = "position_ids" in inputs
        # HIDDEN_OUTPUT (export/onnx.py add_hidden_output): asked for only while keep_hidden is set
        self._outputs = [o.name for o in self.session.get_outputs() if o.name != HIDDEN_OUTPUT]
        hidden = next((o for o in self.session.get_outputs() if o.name == HIDDEN_OUTPUT), None)
        width = hidden.shape[-1] if hidden is not None else None
        self.n_embd = width if isinstance(width, int) else (
            int(input_embeddings.shape[1]) if input_embeddings is not None else None)
        self.has_hidden = hidden is not None  # bundles exported before model step 3 have none
        self.keep_hidden = False
        self.hidden: np.ndarray | None = None
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        self.n_ctx = int(n_ctx or config.get("max_position_embeddings") or 4096)
        self.model_path = model_path
        self.min_rows, self.reuse_prefix, self.n_batch = min_rows, reuse_prefix, n_batch
        self.kv_type = "onnx"
        self.tokenizer = HFTokenizer(folder)
        self.stop_tokens = self.tokenizer.stop_tokens
        self.tokenizer_hash = self.tokenizer.tokenizer_hash
        logits_width = self.session.get_outputs()[0].shape[-1]  # a dim name when not fixed
        self.n_vocab = logits_width if isinstance(logits_width, int) else self.tokenizer.n_vocab
        self.n_past = 0
        self.reused_tokens = 0
        self._cached: list[int] = []
        self._past = self._empty_past()
        self.prefix_cache: PrefixCache | None = None  # attach one to reuse earlier prompts

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> "OnnxBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend protocol --------------------------------------------------------------------
    def prefill(self, tokens: Sequence[int]) -> None:
        keep = common_prefix_length(self._cached, tokens) if self.reuse_prefix else 0
        hit = self.prefix_cache.lookup(tokens) if self.prefix_cache is not None else None
        if hit is not None and hit.tokens > keep:
            past, cached = hit.snapshot
            self._past, self._cached, self.n_past = past, list(cached), len(cached)
            keep = hit.tokens
        self._trim(keep)
        self.reused_tokens = keep
        for i in range(keep, len(tokens), self.n_batch):
            self._run(list(tokens[i : i + self.n_batch]))
        if self.prefix_cache is not None and (hit is None or hit.tokens < len(tokens)):
            nbytes = sum(k.nbytes + v.nbytes for k, v in self._past)
            self.prefix_cache.store(tokens, (list(self._past), tuple(self._cached)), nbytes)

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one token")
        return self._run(list(tokens))

    def rollback(self, n: int) -> None:
        if n > 0:
            self._trim(self.n_past - n)

    # -- internals -----------------------------------------------------------------------------
    def _run(self, tokens: list[int]) -> np.ndarray:
        n = len(tokens)
        pad = max(0, self.min_rows - n)  # rows after the real ones: never seen by them (causal)
        if self.n_past + n + pad > self.n_ctx:
            raise TascError(f"context full: {self.n_past} + {n} tokens > n_ctx {self.n_ctx}")
        ids = tokens + [tokens[-1]] * pad
        total = self.n_past + len(ids)
        feed = {"attention_mask": np.ones((1, total), dtype=np.int64)}
        if self._feed_ids:
            feed["input_ids"] = np.asarray([ids], dtype=np.int64)
        if self._embd is not None:  # rows of a memory-mapped table: only rows in use are paged in
            feed["inputs_embeds"] = np.ascontiguousarray(self._embd[ids])[None]
        if self._position_ids:
            feed["position_ids"] = np.arange(self.n_past, total, dtype=np.int64)[None]
        for layer, (k, v) in enumerate(self._past):
            feed[f"past_key_values.{layer}.key"] = k
            feed[f"past_key_values.{layer}.value"] = v
        want = self.keep_hidden and self.has_hidden
        out = self.session.run(self._outputs + [HIDDEN_OUTPUT] * want, feed)
        self.hidden = out[-1][0, :n].copy() if want else None
        self._past = [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self._layers)]
        self.n_past = total
        self._cached.extend(ids)
        if pad:
            self._trim(total - pad)
        return out[0][0, :n]

    def _trim(self, length: int) -> None:
        if length == 0:
            self._past = self._empty_past()
        elif length < self.n_past:
            # a contiguous copy: onnxruntime would copy a strided view anyway
            self._past = [(np.ascontiguousarray(k[:, :, :length]), np.ascontiguousarray(v[:, :, :length]))
                          for k, v in self._past]
        self.n_past = length
        del self._cached[length:]

    def _empty_past(self) -> list[tuple[np.ndarray, np.ndarray]]:
        z = np.zeros((1, self._kv_heads, 0, self._head_dim), dtype=self._kv_dtype)
        return [(z, z) for _ in range(self._layers)]

    # -- tokenizer and chat template ---------------------------------------------------------
    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.detokenize(tokens)

    def chat_prompt(self, user_message: str) -> list[int]:
        return self.tokenizer.render([{"role": "user", "content": user_message}], add_generation_prompt=True)

    def chat_messages(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.render(messages, add_generation_prompt=True)

    def end_of_turn(self) -> int:
        """The token closing an assistant turn in the template (else the lowest EOS id)."""
        token = end_of_turn_token(self.tokenizer.render, self.stop_tokens)
        if token is not None:
            return token
        if not self.stop_tokens:
            raise TascError("the tokenizer has no end-of-generation token (eos_token_id)")
        return min(self.stop_tokens)
