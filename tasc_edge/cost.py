"""How long a target forward over k tokens takes, and how many drafts are worth verifying.

On a 2-core CPU llama.cpp is compute-bound: verifying 2 tokens costs ~1.6-2.3x one token, so a
fixed long gamma loses. We measure t(k)/t(1) on the running backend and draft only as far as
the expected gain pays for the extra verify cost.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class _Timeable(Protocol):
    def prefill(self, tokens: Sequence[int]) -> None: ...
    def forward(self, tokens: Sequence[int]) -> np.ndarray: ...
    def rollback(self, n: int) -> None: ...


@dataclass(frozen=True)
class CostCurve:
    """ratios[k-1] = t(k)/t(1): time of one target forward over k tokens, relative to one."""

    ratios: tuple[float, ...]
    step_seconds: float = 0.0  # t(1), for reports

    def cost(self, k: int) -> float:
        if k <= len(self.ratios):
            return self.ratios[k - 1]
        slope = self.ratios[-1] - self.ratios[-2] if len(self.ratios) > 1 else 1.0
        return self.ratios[-1] + slope * (k - len(self.ratios))

    @classmethod
    def flat(cls, max_k: int = 16) -> "CostCurve":
        """Memory-bound ideal: verifying k tokens costs the same as one (MBSU's assumption)."""
        return cls(tuple(1.0 for _ in range(max_k)))


def best_draft_length(confidence: Sequence[float], curve: CostCurve) -> int:
    """Draft length d maximising expected tokens per unit time.

    With acceptance probabilities p_i (each conditional on the drafts before it), a forward over
    d drafts plus the pending token commits 1 + sum_j prod_{i<=j} p_i tokens on average and costs
    curve.cost(d + 1). d = 0 is plain decoding.
    """
    return _best(confidence, curve)[1]


def best_rate(confidence: Sequence[float], curve: CostCurve) -> float:
    """Expected tokens per t(1) of verify time when the draft is cut at best_draft_length: what
    a draft is worth to the loop. Two candidate drafts compare by this, not by their expected
    accepted tokens, since a long draft's tail may cost more to verify than it brings."""
    return _best(confidence, curve)[0]


def _best(confidence: Sequence[float], curve: CostCurve) -> tuple[float, int]:
    top_rate, best_d = 1.0 / curve.cost(1), 0
    expected, survive = 1.0, 1.0
    for d, p in enumerate(confidence, start=1):
        survive *= p
        expected += survive
        rate = expected / curve.cost(d + 1)
        if rate > top_rate:
            top_rate, best_d = rate, d
    return top_rate, best_d


def measure_cost_curve(backend: _Timeable, max_k: int = 16, position: int = 128,
                       repeats: int = 5, token: int = 1) -> CostCurve:
    """Median time of forward(k) at a realistic cache position, for k = 1..max_k.

    Repeats are interleaved over k so a burst of machine noise hits every k alike.
    """
    backend.prefill([token] * position)
    times: list[list[float]] = [[] for _ in range(max_k)]
    for _ in range(repeats):
        for k in range(1, max_k + 1):
            t = time.perf_counter()
            backend.forward([token] * k)
            times[k - 1].append(time.perf_counter() - t)
            backend.rollback(k)
    med = [statistics.median(ts) for ts in times]
    ratios = [m / med[0] for m in med]
    # A verify over more tokens never costs less than over fewer: keep the curve monotone so
    # noise cannot make a long draft look free.
    for i in range(1, len(ratios)):
        ratios[i] = max(ratios[i], ratios[i - 1])
    return CostCurve(tuple(ratios), step_seconds=med[0])
