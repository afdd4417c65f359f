"""Verification of a drafted block against the target's logits.

The target evaluates [pending, x1..xd] in one forward, giving logits rows L0..Ld where row i
predicts the token after position i. Draft token x(i+1) is checked against row i; the first
row after the accepted prefix yields the target's own next token (a correction, or a bonus
token when every draft was accepted). So every forward commits at least one token.

Greedy: accept while x == argmax(row). Sampling: speculative sampling with rejection
(Leviathan et al. 2023; Chen et al. 2023): accept x with probability min(1, p(x)/q(x)); on
rejection sample from the residual max(0, p - q) renormalised. An n-gram draft is a point
mass (q(x) = 1), so this reduces to "accept with probability p(x), else sample from p with x
removed". Either way the committed tokens follow the target distribution p exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 mean "off"."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def target_probs(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """The distribution the target samples from: temperature, then top-k, then top-p."""
    z = logits.astype(np.float64) / cfg.temperature
    if 0 < cfg.top_k < len(z):
        kth = np.partition(z, -cfg.top_k)[-cfg.top_k]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, cfg.top_p)) + 1]  # smallest set with mass >= top_p
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return p


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw; the clip guards the float edge where cumsum ends just below 1."""
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))


def verify_greedy(draft: Sequence[int], logits: np.ndarray) -> tuple[int, int]:
    """(number of draft tokens accepted, the target's next token after them)."""
    best = logits.argmax(axis=1)
    n = 0
    while n < len(draft) and int(draft[n]) == int(best[n]):
        n += 1
    return n, int(best[n])


def verify_sampling(draft: Sequence[int], draft_probs: np.ndarray | None, logits: np.ndarray,
                    cfg: SamplingConfig, rng: np.random.Generator) -> tuple[int, int]:
    """Speculative sampling. draft_probs[i] is the drafter's distribution q for draft[i]
    (None: the draft is deterministic, a point mass)."""
    for i, x in enumerate(draft):
        p = target_probs(logits[i], cfg)
        x = int(x)
        q_x = 1.0 if draft_probs is None else float(draft_probs[i][x])
        if x < len(p) and rng.random() * q_x < p[x]:  # accept with prob min(1, p(x)/q(x))
            continue
        if draft_probs is None:
            residual = p.copy()
            if x < len(p):
                residual[x] = 0.0
        else:
            residual = np.maximum(p - draft_probs[i][: len(p)], 0.0)
        total = residual.sum()
        # total == 0 only if p was a point mass on x, in which case x was accepted above
        return i, sample(residual / total, rng)
    return len(draft), sample(target_probs(logits[len(draft)], cfg), rng)
