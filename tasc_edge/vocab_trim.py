"""VocabTrim (arXiv 2506.22694): which target tokens a drafter's LM head keeps.

A model drafter spends most of its bytes per step in the LM head when the vocabulary is big
(SmolLM2: 49,152 x 576 head vs 4 decoder layers; Gemma 3: 262,144 rows). On a narrow task
the target emits a few thousand distinct tokens, so a head restricted to those rows drafts
almost as well for a fraction of the bytes. Verification still uses the full target, so a
token the trimmed head cannot propose only costs acceptance, never exactness.

Calibration counts token frequencies on task text; `choose_kept` keeps the top-K (or the
fewest tokens reaching a coverage target), always including stop/special tokens. The
kept-id list is saved with its coverage and tokenizer hash (.npz, no pickle).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_bytes

FORMAT_VERSION = 1
CALIB_SOURCES = ("target", "drafter", "reference", "raw")


@dataclass
class KeptVocab:
    """ids[i] is the target token id behind the trimmed head's row i (sorted ascending)."""

    ids: np.ndarray  # int64, sorted, unique
    n_vocab: int  # the target vocabulary size
    coverage: float  # fraction of calibration tokens whose id is kept
    calib: str  # which calibration text (CALIB_SOURCES)
    calib_tokens: int
    tokenizer_hash: str

    @property
    def k(self) -> int:
        return len(self.ids)

    def to_target(self, local: int) -> int:
        return int(self.ids[local])

    def to_local(self) -> np.ndarray:
        """Target id -> row in the trimmed head, -1 where the id is not kept."""
        table = np.full(self.n_vocab, -1, dtype=np.int64)
        table[self.ids] = np.arange(self.k)
        return table

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, format_version=np.array(FORMAT_VERSION), ids=self.ids,
                            n_vocab=np.array(self.n_vocab), coverage=np.array(self.coverage),
                            calib=np.array(self.calib), calib_tokens=np.array(self.calib_tokens),
                            tokenizer_hash=np.array(self.tokenizer_hash))
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, expect_tokenizer_hash: str | None = None) -> "KeptVocab":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format_version"]) != FORMAT_VERSION:
                    raise TascError(f"{path}: kept-vocabulary format {int(z['format_version'])}, "
                                    f"this tasc-edge reads {FORMAT_VERSION}; re-export the drafter")
                kept = cls(z["ids"].astype(np.int64), int(z["n_vocab"]), float(z["coverage"]),
                           str(z["calib"]), int(z["calib_tokens"]), str(z["tokenizer_hash"]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise TascError(f"{path}: not a readable kept-vocabulary file ({e}); re-export it") from e
        if expect_tokenizer_hash is not None and kept.tokenizer_hash != expect_tokenizer_hash:
            raise TascError(f"{path}: kept ids were chosen with tokenizer {kept.tokenizer_hash[:12]}, "
                            f"the target's is {expect_tokenizer_hash[:12]}; re-export the drafter")
        return kept


def token_counts(sequences: Iterable[Sequence[int]], n_vocab: int) -> np.ndarray:
    """How often each token id occurs in the calibration sequences."""
    counts = np.zeros(n_vocab, dtype=np.int64)
    for seq in sequences:
        ids = np.asarray(seq, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
            raise TascError(f"calibration token id out of range 0..{n_vocab - 1}: the corpus was "
                            "tokenized with another tokenizer")
        counts += np.bincount(ids, minlength=n_vocab)
    return counts


def choose_kept(counts: np.ndarray, tokenizer_hash: str, calib: str, top_k: int | None = None,
                coverage: float | None = None, always: Iterable[int] = ()) -> KeptVocab:
    """Top-K ids by frequency, or the fewest reaching `coverage` of the calibration tokens;
    `always` (stop and special tokens) are added on top, so a drafter can propose the end."""
    if calib not in CALIB_SOURCES:
        raise TascError(f"unknown calibration source {calib!r}; choose {', '.join(CALIB_SOURCES)}")
    total = int(counts.sum())
    if total == 0:
        raise TascError("empty calibration corpus: no tokens to choose a vocabulary from")
    if (top_k is None) == (coverage is None):
        raise TascError("choose the kept vocabulary by exactly one of --top-k or --coverage")
    order = np.argsort(-counts, kind="stable")
    if top_k is not None:
        if top_k < 1:
            raise TascError(f"--top-k must be at least 1, got {top_k}")
        n = min(top_k, len(counts))
    else:
        if not 0.0 < coverage <= 1.0:
            raise TascError(f"--coverage must be in (0, 1], got {coverage}")
        cum = np.cumsum(counts[order])
        n = int(np.searchsorted(cum, coverage * total - 1e-9)) + 1
    ids = np.union1d(order[:n], np.fromiter(always, dtype=np.int64)).astype(np.int64)
    ids = ids[(ids >= 0) & (ids < len(counts))]
    covered = float(counts[ids].sum() / total)
    return KeptVocab(ids, len(counts), covered, calib, total, tokenizer_hash)
