"""VocabTrim drafters for llama.cpp bundles (the GGUF side of export/vocabtrim.py).

    bundle/drafter/embed.npy                     (input table of the trimmed variants, shared)
    bundle/drafter/full/   model.gguf            (untrimmed: the target's vocabulary)
    bundle/drafter/k4096/  model.gguf + kept.npz (head of 4,096 target ids)

llama.cpp sizes a model's embedding and output matrices by its vocabulary, so a head of
K < n_vocab rows cannot sit under the target's vocabulary. Two designs:
  (a) keep the full vocabulary and output tensor, read hidden states (`llama_set_embeddings`)
      and apply the K-row head in numpy. llama.cpp's graph still ends in the full output
      matmul on every step, so the bytes VocabTrim exists to save are read anyway;
  (b) give the drafter GGUF a vocabulary of K placeholder tokens, so its output matrix *is*
      the trimmed head and llama.cpp applies it natively (quantized, multithreaded), and feed
      the input as embeddings (`llama_batch.embd`) gathered from the full table in embed.npy,
      because the context holds tokens outside the kept set (prompt words the output copies).
We use (b): it reads K/n_vocab of the head per step instead of all of it plus a numpy head.
The embedding gather reads one row per token. The price: embed.npy (n_vocab x n_embd fp16,
56 MB for SmolLM2, 335 MB for Gemma 3) sits next to the drafters, one file for every K; it is
memory-mapped, so only rows in use are paged. Gemma multiplies token embeddings by
sqrt(n_embd), and llama.cpp's gemma3 graph does so only for token ids, not for embeddings fed
in a batch, so the table is stored already scaled (what the token path would have computed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from tasc_edge.errors import require
from tasc_edge.export.gguf_write import GGUF_ARCH, _load_weights, write_gguf
from tasc_edge.export.onnx import place_table
from tasc_edge.runtime.models import resolve_model
from tasc_edge.vocab_trim import KeptVocab


def export_gguf_drafter(hf_dir: Path, target_gguf: Path, work: Path, folder: Path,
                        kept: KeptVocab | None, quant: str, table: Path, log=print) -> None:
    """Write drafter/<variant>/model.gguf for a GGUF bundle; a trimmed head also needs the
    input table, written to `table` unless it already holds it (the variants share it)."""
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / f"drafter-{folder.name}-f16.gguf"
    write_gguf(hf_dir, f16, log, base=target_gguf, keep_rows=None if kept is None else kept.ids)
    model = resolve_model(str(f16), quant) if quant not in ("as-is", "f16") else f16
    tmp = folder / "model.gguf.tmp"
    shutil.copyfile(model, tmp)
    os.replace(tmp, folder / "model.gguf")
    if kept is not None:
        place_table(input_embeddings(hf_dir), table)
    f16.unlink(missing_ok=True)


def input_embeddings(hf_dir: Path) -> np.ndarray:
    """The rows llama.cpp's graph would take from token_embd for each token id, fp16."""
    config = json.loads((hf_dir / "config.json").read_text())
    key = "model.embed_tokens.weight"
    table = _load_weights(hf_dir, (key,))[key]  # the table only, not the whole checkpoint again
    if GGUF_ARCH.get(config.get("model_type")) == "gemma3":
        table = table * np.float32(np.sqrt(config["hidden_size"]))
    return table.astype(np.float16)


def gguf_step_bytes(path: Path) -> int:
    """Weight bytes one decode step reads: every tensor but an input-only embedding table
    (token_embd is also the head when the file has no output tensor)."""
    gguf = require("gguf", "export")
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    skip = "token_embd.weight" if "output.weight" in tensors else None
    return sum(n for name, n in tensors.items() if name != skip)
