"""A drafter that reads the target's own last hidden state: no drafter KV cache to keep in step.

Why: a self-drafter (the target's first layers, a trimmed head) must feed every committed
token through its own layers before it can say anything, ~0.3-0.6 ms per token on 2 cores;
chained behind the n-grams that cost ate the few percent its better first tokens won
(docs/results/chained-look). The target's verify forward already computes the final hidden
state h of the row that produced the newest committed token x. A small head on (h, x) -
Medusa's idea, with EAGLE's "also look at the token just chosen" - predicts the token after
x with a handful of matrix-vector products over the VocabTrim kept ids (~0.1 ms), so a
chained drafter can look at every step for free.

    z      = silu(w_in @ [rms(h), embed[x]] + b_in)
    u      = rms(h) + w_mix @ z
    logits = w_out @ u                       (K rows: the kept ids)

u is trained to be the normalised hidden state of the *next* row as well (EAGLE's feature
regression, with its own prediction fed back during training, HASS-style), so a head with
`depth` > 1 drafts on: (u, its own token) is the next step's input. A depth-1 head (format 1,
trained on tokens only) has no usable state for the token it proposes and drafts one token;
the n-gram drafter continues after it in `ChainedDrafter`. Exactness is the loop's: each
proposal depends only on committed and earlier drafted tokens, so greedy verification and
rejection sampling (the head's distribution over the kept ids, zero elsewhere) stay exact.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tasc_edge.decode import Draft
from tasc_edge.drafters import AcceptanceCalibrator
from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_bytes
from tasc_edge.model_drafter import draft_confidence, draft_probs, spread_to_vocab
from tasc_edge.verify import SamplingConfig, sample
from tasc_edge.vocab_trim import KeptVocab

FORMAT_VERSION = 2  # 2 adds `depth`; format 1 files read as depth 1


def rms_normalise(h: np.ndarray) -> np.ndarray:
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + 1e-6)


@dataclass
class HiddenHead:
    kept: KeptVocab
    w_in: np.ndarray  # [d_ff, 2 * d]
    b_in: np.ndarray  # [d_ff]
    w_mix: np.ndarray  # [d, d_ff]
    embed: np.ndarray  # [K + 1, d]: kept ids' input rows; the last row stands for any other id
    w_out: np.ndarray  # [K, d]
    depth: int = 1  # tokens per draft it was trained to chain (its u regressed on the next state)

    @property
    def width(self) -> int:
        return self.w_out.shape[1]

    def logits(self, hidden: np.ndarray, token: int) -> np.ndarray:
        """Logits over the kept ids for the token after `token`, given the target's final
        hidden state at the row that produced `token`."""
        return self.step(hidden, token)[0]

    def step(self, hidden: np.ndarray, token: int) -> tuple[np.ndarray, np.ndarray]:
        """(logits over the kept ids for the token after `token`, u: the head's estimate of
        the hidden state that will produce it, the next step's `hidden` when depth > 1)."""
        local = self._local[token] if 0 <= token < len(self._local) else -1
        h = rms_normalise(np.asarray(hidden, dtype=np.float32))
        # einsum, not BLAS: multi-threaded BLAS between two llama.cpp forwards fights its
        # spinning OpenMP threads (head 4 ms instead of 0.6, the next forward 60% slower)
        x = np.einsum("ij,j->i", self._w_state, h) + self._token_in[local if local >= 0 else -1]
        z = x / (1.0 + np.exp(-x))
        u = h + np.einsum("ij,j->i", self.w_mix, z)
        return np.einsum("ij,j->i", self.w_out, u), u

    def __post_init__(self) -> None:
        d = self.w_out.shape[1]
        if self.w_out.shape[0] != self.kept.k or self.embed.shape != (self.kept.k + 1, d) \
                or self.w_in.shape[1] != 2 * d or self.w_mix.shape != (d, self.w_in.shape[0]):
            raise TascError("hidden head: weight shapes do not fit together (a damaged file?)")
        self._local = self.kept.to_local()
        # w_in's token half only ever meets one of the K + 1 embedding rows: fold it in once
        # ([K + 1, d_ff], + b_in), so a step reads one row of it instead of d_ff x d weights.
        # The head's weights come from DRAM after every target forward, so bytes are time.
        self._w_state = np.ascontiguousarray(self.w_in[:, :d])
        # (once, at load: BLAS is fine here, ~10x faster than einsum for this matrix product)
        self._token_in = self.embed @ self.w_in[:, d:].T + self.b_in

    def step_bytes(self) -> int:
        """Bytes one evaluation reads: the state half of w_in, w_mix, w_out and one row of the
        folded token table."""
        return sum(a.nbytes for a in (self._w_state, self.w_mix, self.w_out)) + self._token_in[0].nbytes

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, format_version=np.array(FORMAT_VERSION), w_in=self.w_in, b_in=self.b_in,
                 w_mix=self.w_mix, embed=self.embed, w_out=self.w_out, depth=np.array(self.depth))
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, kept: KeptVocab) -> "HiddenHead":
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version not in (1, FORMAT_VERSION):
                raise TascError(f"{path}: hidden head format {version}, this version reads "
                                f"1-{FORMAT_VERSION}; re-export")
            weights = (z[k].astype(np.float32) for k in ("w_in", "b_in", "w_mix", "embed", "w_out"))
            return cls(kept, *weights, depth=int(z["depth"]) if version >= 2 else 1)


class HiddenHeadDrafter:
    """Drafts from the target backend's last hidden states (`target.hidden`, rows of its last
    forward, kept when `target.keep_hidden` is set): one token, or up to the head's depth. Same interface as ModelDrafter
    (begin / draft / peek / update / cold / steps), so ChainedDrafter can use it as its model."""

    free_look = True  # peek() costs one head evaluation, no drafter forward: ChainedDrafter looks always

    def __init__(self, target, head: HiddenHead, n_vocab: int, sampling: SamplingConfig | None = None,
                 seed: int = 0, prior_strength: float = 4.0, max_depth: int | None = None,
                 min_survival: float = 0.1) -> None:
        width = getattr(target, "n_embd", head.width)
        if width != head.width:
            raise TascError(f"the hidden head reads states of width {head.width}, the target's "
                            f"are {width}; it was trained for another model")
        if head.kept.n_vocab > n_vocab:
            raise TascError(f"kept ids index a vocabulary of {head.kept.n_vocab}, the target has {n_vocab}")
        self.target, self.head, self.n_vocab, self.kept = target, head, n_vocab, head.kept
        self.sampling = sampling or SamplingConfig()
        self.rng = np.random.default_rng(seed)
        self.calibrator = AcceptanceCalibrator(prior_strength)
        # a head trained to chain `depth` steps drafts that many at most; stop earlier once
        # P(every draft so far accepted) drops below min_survival
        self.max_depth = max(1, head.depth if max_depth is None else max_depth)
        self.min_survival = min_survival
        self.steps = 0  # head evaluations (they read the head's weights, not the target's)
        self._state: tuple[np.ndarray, int] | None = None  # (hidden row, the token it produced)
        self._first: tuple[np.ndarray, np.ndarray] | None = None  # (probs, u) after the committed sequence
        self._chain: tuple[Draft, list, bool] | None = None  # argmax chain, its buckets, may go on
        self._buckets: list[tuple] = []

    def fresh(self) -> "HiddenHeadDrafter":
        return HiddenHeadDrafter(self.target, self.head, self.n_vocab, self.sampling,
                                 prior_strength=self.calibrator.prior_strength, max_depth=self.max_depth,
                                 min_survival=self.min_survival)

    def close(self) -> None:
        pass

    def begin(self, prompt: Sequence[int]) -> None:
        # the prefill computes no hidden rows (llama.cpp would then compute every prompt row's
        # logits too): the first draft of a request comes from the n-grams alone. Whoever runs
        # the target without this drafter switches the output off again (bench, run --compare).
        self.target.keep_hidden = True
        self._state, self._first, self._chain = None, None, None

    def cold(self) -> None:
        self._state, self._first, self._chain = None, None, None

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        judged = min(len(draft.tokens), n_accepted + 1)
        for i in range(min(judged, len(self._buckets))):
            self.calibrator.observe(self._buckets[i], accepted=i < n_accepted)
        # the verify forward's row len(committed) - 1 produced committed[-1] (n_accepted may be
        # a chained drafter's count for this part of the draft only, so it is not used here)
        hidden, row = getattr(self.target, "hidden", None), len(committed) - 1
        ok = hidden is not None and 0 <= row < len(hidden)
        self._state = (hidden[row], int(committed[-1])) if ok else None
        self._first, self._chain = None, None

    def peek(self) -> tuple[int, float]:
        """The head's argmax after the committed sequence and its probability; (-1, 0) when it
        has no hidden state (first step of a request)."""
        p = self._distribution()
        if p is None:
            return -1, 0.0
        local = int(np.argmax(p))
        return self.kept.to_target(local), float(p[local])

    def draft(self, max_tokens: int, after: Sequence[int] = ()) -> Draft:
        """Up to `max_depth` tokens: each step feeds the head's estimate u of the next state,
        with the token it just proposed, back into it (a depth-1 head stops after one)."""
        self._buckets = []
        if max_tokens <= 0 or after or self._distribution() is None:
            return Draft()  # nothing known past the committed sequence
        if self.sampling.greedy:
            out, self._buckets = self._argmax_chain(max_tokens)
            return out
        out, rows = Draft(), []
        for token, p, conf, bucket in self._walk(max_tokens, lambda p: sample(p, self.rng)):
            out.tokens.append(token)
            out.confidence.append(conf)
            self._buckets.append(bucket)
            rows.append(p)
        out.probs = spread_to_vocab(rows, self.kept, self.n_vocab)
        return out

    def peek_chain(self, max_tokens: int) -> Draft:
        """The head's argmax chain after the committed sequence, with its confidences: what a
        greedy draft() would give, and what a chained drafter may choose on without biasing
        sampling (it never depends on a sample). Computed once per state, extended as asked."""
        if max_tokens <= 0 or self._distribution() is None:
            return Draft()
        return self._argmax_chain(max_tokens)[0]

    def _argmax_chain(self, n: int) -> tuple[Draft, list[tuple]]:
        have = self._chain
        if have is None or (len(have[0].tokens) < n and have[2]):
            walk = self._walk(n, lambda p: int(np.argmax(p)))
            steps = list(walk)
            more = len(steps) == min(n, self.max_depth)  # cut by n, not by the head's own stop
            have = (Draft([t for t, *_ in steps], [c for *_, c, _ in steps]), [b for *_, b in steps], more)
            self._chain = have
        return have[0].truncate(n), have[1][:n]

    def _walk(self, n: int, pick):
        """(token, distribution, confidence, bucket) per draft row, from the committed state;
        stops at n rows, the head's depth, or once P(all accepted) < min_survival. The stop
        reads confidences from the distributions, never from the picked token."""
        p, u = self._first
        survival, token = 1.0, -1
        for depth in range(min(n, self.max_depth)):
            if depth:
                logits, u = self.head.step(u, token)
                p = draft_probs(logits.astype(np.float64), self.sampling)
                self.steps += 1
            conf, bucket = draft_confidence(self.calibrator, p, depth)
            survival *= conf
            if depth and survival < self.min_survival:
                return
            local = pick(p)
            token = self.kept.to_target(local)
            yield token, p, conf, bucket

    def _distribution(self) -> np.ndarray | None:
        """The head's distribution after the committed sequence (one evaluation per state)."""
        if self._state is None:
            return None
        if self._first is None:
            logits, u = self.head.step(*self._state)
            self._first = (draft_probs(logits.astype(np.float64), self.sampling), u)
            self.steps += 1
        return self._first[0]
