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

    def observe(self, k: int, seconds: float) -> None:
        """A fixed curve ignores what the loop measures (OnlineCost learns from it)."""

    @classmethod
    def flat(cls, max_k: int = 16) -> "CostCurve":
        """Memory-bound ideal: verifying k tokens costs the same as one (MBSU's assumption)."""
        return cls(tuple(1.0 for _ in range(max_k)))


class OnlineCost:
    """The start-up curve, corrected by the verify forwards the loop actually runs.

    The start-up probe times a dummy token at one cache position on an idle backend; real
    verifies run at other positions, under other load (a Pi throttling, a second process), and
    a curve that is 10% too cheap at k = 2 turns a marginal draft into a loss on this CPU,
    where t(2)/t(1) is ~1.6. Each t(k) is a windowed running mean that starts from the probe
    (`prior_weight` pseudo-observations); an observation is clipped to `clip` x the estimate,
    so one multi-second OpenMP stall (seen here) cannot swing it. One per backend, shared by
    every drafter on it: the cost belongs to the target, not to the drafter.
    """

    def __init__(self, start: CostCurve, prior_weight: float = 8.0, window: float = 64.0,
                 clip: float = 3.0) -> None:
        base = start.step_seconds or 1.0
        self.start, self.window, self.clip = start, window, clip
        self._t = [r * base for r in start.ratios]  # seconds per forward of k tokens
        self._n = [prior_weight] * len(start.ratios)
        self._ratios = tuple(start.ratios)
        self._curve = CostCurve(self._ratios, step_seconds=self._t[0])

    @property
    def step_seconds(self) -> float:
        return self._t[0]

    @property
    def ratios(self) -> tuple[float, ...]:
        return self._ratios

    def observe(self, k: int, seconds: float) -> None:
        if not 1 <= k <= len(self._t):
            return
        i = k - 1
        self._n[i] = min(self._n[i] + 1, self.window)
        self._t[i] += (min(seconds, self.clip * self._t[i]) - self._t[i]) / self._n[i]
        ratios = [t / self._t[0] for t in self._t]
        for j in range(1, len(ratios)):  # monotone, as the start-up curve
            ratios[j] = max(ratios[j], ratios[j - 1])
        self._ratios = tuple(ratios)
        self._curve = CostCurve(self._ratios, step_seconds=self._t[0])

    def cost(self, k: int) -> float:
        return self._curve.cost(k)

    def curve(self) -> CostCurve:
        """What it has learned so far, as a fixed curve (for reports)."""
        return self._curve


def best_draft_length(confidence: Sequence[float], curve: "CostCurve | OnlineCost") -> int:
    """Draft length d maximising expected tokens per unit time.

    With acceptance probabilities p_i (each conditional on the drafts before it), a forward over
    d drafts plus the pending token commits 1 + sum_j prod_{i<=j} p_i tokens on average and costs
    curve.cost(d + 1). d = 0 is plain decoding.
    """
    best_rate, best_d = 1.0 / curve.cost(1), 0
    expected, survive = 1.0, 1.0
    for d, p in enumerate(confidence, start=1):
        survive *= p
        expected += survive
        rate = expected / curve.cost(d + 1)
        if rate > best_rate:
            best_rate, best_d = rate, d
    return best_d


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
