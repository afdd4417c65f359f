"""VocabTrim drafters for llama.cpp bundles (the GGUF side of export/vocabtrim.py).

    bundle/drafter/full/   model.gguf                        (untrimmed: the target's vocabulary)
    bundle/drafter/k4096/  model.gguf + embed.npy + kept.npz (head of 4,096 target ids)

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
56 MB for SmolLM2) sits next to the drafter; it is memory-mapped, so only rows in use are paged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from tasc_edge.errors import require
from tasc_edge.export.gguf_write import _load_weights, write_gguf
from tasc_edge.files import atomic_write_npy
from tasc_edge.runtime.models import resolve_model
from tasc_edge.vocab_trim import KeptVocab


def export_gguf_drafter(hf_dir: Path, target_gguf: Path, work: Path, folder: Path,
                        kept: KeptVocab | None, quant: str, log=print) -> None:
    """Write drafter/<variant>/ for a GGUF bundle: model.gguf (+ embed.npy for a trimmed head)."""
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / f"drafter-{folder.name}-f16.gguf"
    write_gguf(hf_dir, f16, log, base=target_gguf, keep_rows=None if kept is None else kept.ids)
    model = resolve_model(str(f16), quant) if quant not in ("as-is", "f16") else f16
    tmp = folder / "model.gguf.tmp"
    shutil.copyfile(model, tmp)
    os.replace(tmp, folder / "model.gguf")
    if kept is not None:
        atomic_write_npy(folder / "embed.npy", _input_embeddings(hf_dir))
    f16.unlink(missing_ok=True)


def _input_embeddings(hf_dir: Path) -> np.ndarray:
    return _load_weights(hf_dir)["model.embed_tokens.weight"].astype(np.float16)


def gguf_step_bytes(path: Path) -> int:
    """Weight bytes one decode step reads: every tensor but an input-only embedding table
    (token_embd is also the head when the file has no output tensor)."""
    gguf = require("gguf", "export")
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    skip = "token_embd.weight" if "output.weight" in tensors else None
    return sum(n for name, n in tensors.items() if name != skip)
