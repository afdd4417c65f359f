"""How long a target forward over k tokens takes, and how many drafts are worth verifying.

On a 2-core CPU llama.cpp is compute-bound: verifying 2 tokens costs ~1.6-2.3x one token, so a
fixed long gamma loses. We measure t(k)/t(1) on the running backend and draft only as far as
the expected gain pays for the extra verify cost.

The curve is not monotone, and the loop uses that. llama.cpp's x86 kernels multiply 4 rows at
a time and give every leftover row a pass of its own over the weights: tinyBLAS tiles at most
4 columns (llamafile/sgemm.cpp, `mnpack`), which is what a Q8_0 head runs on, and repacked
Q4_0 weights do a 4-row gemm plus one gemv per leftover row (ggml-cpu/repack.cpp). Measured on
Gemma 3 270M q4_0 (2-core AMD EPYC), t(k) for k = 1..16 in ms: 10.7 24.0 30.6 32.6 47.9 54.7
63.8 44.6 60.1 64.3 69.8 50.0 65.5 70.8 78.6 53.2 - sixteen rows cost what five do. So a draft
is verified over the row count that gives the most tokens per unit time, and rows past the
drafter's own tokens are filler (decode.pad_draft) where more rows cost less than fewer.
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
    """ratios[k-1] = t(k)/t(1): time of one target forward over k tokens, relative to one, as
    measured (not monotone: see the module docstring)."""

    ratios: tuple[float, ...]
    step_seconds: float = 0.0  # t(1), for reports

    def cost(self, k: int) -> float:
        if k <= len(self.ratios):
            return self.ratios[k - 1]
        # past the measured rows, the mean slope: the last step of a sawtooth can be negative
        n = len(self.ratios)
        slope = (self.ratios[-1] - self.ratios[0]) / (n - 1) if n > 1 else 1.0
        return self.ratios[-1] + max(slope, 0.0) * (k - n)

    @classmethod
    def flat(cls, max_k: int = 16) -> "CostCurve":
        """Memory-bound ideal: verifying k tokens costs the same as one (MBSU's assumption)."""
        return cls(tuple(1.0 for _ in range(max_k)))


def best_draft_length(confidence: Sequence[float], curve: CostCurve, room: int | None = None) -> int:
    """Draft length d maximising expected tokens per unit time.

    With acceptance probabilities p_i (each conditional on the drafts before it), a forward over
    d drafts plus the pending token commits 1 + sum_j prod_{i<=j} p_i tokens on average and costs
    curve.cost(d + 1). d = 0 is plain decoding. With `room` (the most drafts the loop may
    verify) d can exceed len(confidence): rows past the draft are filler that is accepted with
    probability 0 here, worth verifying only where the curve makes more rows cheaper.
    """
    return _best(confidence, curve, room)[1]


def best_rate(confidence: Sequence[float], curve: CostCurve, room: int | None = None) -> float:
    """Expected tokens per t(1) of verify time when the draft is cut (or filled) at
    best_draft_length: what a draft is worth to the loop. Two candidate drafts compare by this,
    not by their expected accepted tokens, since a long draft's tail may cost more to verify
    than it brings."""
    return _best(confidence, curve, room)[0]


def _best(confidence: Sequence[float], curve: CostCurve, room: int | None) -> tuple[float, int]:
    top_rate, best_d = 1.0 / curve.cost(1), 0
    expected, survive = 1.0, 1.0
    for d in range(1, max(len(confidence), room or 0) + 1):
        survive *= confidence[d - 1] if d <= len(confidence) else 0.0
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
    # Kept as measured: where a forward over more rows costs less than over fewer (llama.cpp's
    # 4-row tiles, see the module docstring) the loop verifies the cheaper, longer block.
    return CostCurve(tuple(m / med[0] for m in med), step_seconds=med[0])
