"""Chi-square goodness of fit without scipy (Wilson-Hilferty approximation of the tail)."""

import math

import numpy as np


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    if np.any(counts[probs == 0] > 0):
        return 0.0  # an outcome the target gives probability 0 was produced
    mask = probs > 0
    n = counts.sum()
    expected = probs[mask] * n
    stat = float(((counts[mask] - expected) ** 2 / expected).sum())
    df = int(mask.sum()) - 1
    if df <= 0:
        return 1.0
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))
