"""Device profiles and what a bench report predicts for a device we did not run on.

Profiles live in the top-level `devices/` folder, installed as `tasc_edge.devices`.

The model is memory-bound decoding: one target step reads every weight once, so
    step time ~ model bytes / (device bandwidth x efficiency)
where efficiency is the fraction of bandwidth a decode step reached on the machine that ran
the bench (measured there: weight bytes / step time / copy bandwidth). Speculative speed-up
on the device is tau / c(mean verify width), using the measured t(k)/t(1) curve; the
memory-bound ideal (flat curve) is MBSU = tau. Everything here is a prediction and says so;
`tasc-edge bench --device NAME` on the real board records measured figures in the same
format to check it.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from importlib import resources

import numpy as np

from tasc_edge.cost import CostCurve
from tasc_edge.errors import TascError


@dataclass(frozen=True)
class DeviceProfile:
    key: str
    name: str
    cores: int
    ram_gb: float
    bandwidth_theoretical_gbs: float
    bandwidth_sustained_gbs: float
    bandwidth_source: str
    thermal: str


def available_profiles() -> list[str]:
    root = resources.files("tasc_edge.devices")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_profile(key: str) -> DeviceProfile:
    if key == "auto":
        return auto_profile()
    path = resources.files("tasc_edge.devices") / f"{key}.toml"
    if not path.is_file():
        raise TascError(f"unknown device profile {key!r}; choose one of auto, "
                        f"{', '.join(available_profiles())}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        return DeviceProfile(key=key, **data)
    except TypeError as e:
        raise TascError(f"device profile {key}.toml: {e}") from e


def measure_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written), best of `repeats`: a numpy copy
    of an array far larger than any cache. One thread; decode kernels may reach more."""
    src = np.ones(mb * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def auto_profile() -> DeviceProfile:
    import os

    bw = measure_bandwidth()
    return DeviceProfile("auto", "this machine (measured)", os.cpu_count() or 1, 0.0, bw, bw,
                         "measured now (numpy copy probe, one thread)", "unknown")


@dataclass(frozen=True)
class Prediction:
    dataset: str
    method: str
    plain_tokens_per_s: float
    speedup: float  # with this machine's measured t(k)/t(1) curve
    speedup_memory_bound: float  # MBSU: flat verify curve, the ideal on a memory-bound device
    tokens_per_s: float
    recommended_max_draft: int


def step_efficiency(model_bytes: int, step_s: float, bandwidth_gbs: float) -> float:
    """Fraction of copy bandwidth one decode step reached on the bench machine."""
    return (model_bytes / step_s) / (bandwidth_gbs * 1e9)


def best_fixed_gamma(acceptance: float, curve: CostCurve, max_gamma: int = 16) -> int:
    """Draft length maximising expected tokens per unit time at a constant per-token
    acceptance rate: E(d) = (1 - a^(d+1)) / (1 - a), cost c(d + 1)."""
    a = min(max(acceptance, 0.0), 0.999)
    rates = [((1 - a ** (d + 1)) / (1 - a)) / curve.cost(d + 1) for d in range(max_gamma + 1)]
    return int(np.argmax(rates))


def predict(profile: DeviceProfile, report: dict) -> list[Prediction]:
    """Predictions for `profile` from a bench report (see runtime/bench.py)."""
    try:
        curve = CostCurve(tuple(report["cost_curve"]["ratios"]), report["cost_curve"]["step_ms"] / 1e3)
        bench_bw = float(report["bandwidth_gbs"])
        model_bytes = int(report["model_bytes"])
        results = report["results"]
    except KeyError as e:
        raise TascError(f"bench report lacks {e}; re-run tasc-edge bench with this version") from e
    eff = step_efficiency(model_bytes, curve.step_seconds, bench_bw)
    plain_tps = profile.bandwidth_sustained_gbs * 1e9 * eff / model_bytes
    out = []
    for r in results:
        if r.get("tau_mean") is None:  # peers: internals not instrumented
            continue
        speedup = r["speedup_predicted"] or 1.0
        out.append(Prediction(r["dataset"], r["method"], plain_tps, speedup, r["mbsu"],
                              plain_tps * speedup,
                              best_fixed_gamma(r["acceptance"] or 0.0, curve)))
    return out
