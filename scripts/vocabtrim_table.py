"""Issue-6 table from a `tasc-edge bench` report with model:/chained: methods.

    python scripts/vocabtrim_table.py /work/run/gemma-bench/bench.json [--ngram tasc-spec+gen]
        [--chained chained:head-k1024-d3]

Per task: tau, MBSU and wall-clock speed-up (median of per-row ratios to plain) for the
untrimmed drafter (model:full), each trimmed one (model:k<K>), the n-grams alone and chained;
then trimmed-vs-untrimmed MBSU and tau change, and a *paired* chained-vs-parts comparison:
per row, the time of each part over chained's (> 1: chained faster), its median, a bootstrap
95% interval of that median, and the share of rows where chained was faster. "Beats" is
claimed only when the interval lies above 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np


def paired(times: dict, a: str, b: str, seed: int = 0) -> tuple[float, float, float, float]:
    """(median, lo, hi, share>1) of time[a] / time[b] over rows that ran both."""
    r = np.array([t[a] / t[b] for t in times.values() if a in t and b in t])
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(r, size=(2000, len(r))), axis=1)
    return float(np.median(r)), float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975)), float(np.mean(r > 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench")
    ap.add_argument("--ngram", default="tasc-spec+gen")
    ap.add_argument("--chained", default=None, help="which chained: method (default: the first)")
    args = ap.parse_args()
    path = Path(args.bench)
    report = json.loads((path / "bench.json" if path.is_dir() else path).read_text())
    res = {(r["dataset"], r["method"]): r for r in report["results"]}
    methods = report["config"]["methods"]
    # model:k<K> (self-drafters) and model:head-k<K> (hidden-state heads)
    trimmed = sorted((m for m in methods if m.startswith(("model:k", "model:head-k"))),
                     key=lambda m: (m.startswith("model:head"), int(m.split("k")[-1].split("-")[0])))
    chained = args.chained or next((m for m in methods if m.startswith("chained:")), None)
    # chained is compared with its own model part alone when the run has it
    own = "model:" + chained.split(":", 1)[1] if chained else None
    model_part = own if own in methods else (trimmed[0] if trimmed else None)
    times: dict[str, dict] = {}
    for row in report["rows"]:
        times.setdefault(row["dataset"], {}).setdefault(row["row"], {})[row["method"]] = row["total_s"]
    has_full = "model:full" in methods  # a chained-policy run may leave the untrimmed one out
    ks = " / ".join(["full"] * has_full + [m.split(":")[1] for m in trimmed])
    print(f"| task (rows) | tau {ks} | MBSU {ks} | wall {ks} | n-grams / chained wall (tau) |")
    print("|---|---|---|---|---|")
    notes = []
    for ds in report["config"]["datasets"]:
        if (ds, "plain") not in res:
            continue
        cols = ["model:full"] * has_full + trimmed
        get = lambda key, fmt: " / ".join(format(res[(ds, m)][key], fmt) for m in cols)  # noqa: E731
        ng, ch = res[(ds, args.ngram)], res[(ds, chained)] if chained else None
        print(f"| {ds} ({res[(ds, 'plain')]['rows']}) | {get('tau_mean', '.2f')} | {get('mbsu', '.2f')} | "
              f"{get('speedup_median', '.2f')}x | {ng['speedup_median']:.2f} / "
              f"{ch['speedup_median'] if ch else float('nan'):.2f}x ({ng['tau_mean']:.2f} / "
              f"{ch['tau_mean'] if ch else float('nan'):.2f}) |")
        parts = []
        if has_full and trimmed:
            full, k0 = res[(ds, "model:full")], res[(ds, trimmed[0])]
            parts.append(f"{trimmed[0]} vs full MBSU {k0['mbsu'] / full['mbsu']:.2f}x, tau "
                         f"{100 * (k0['tau_mean'] / full['tau_mean'] - 1):+.1f}%")
        if chained:
            for part in (args.ngram, *[model_part] * bool(model_part)):
                med, lo, hi, share = paired(times[ds], part, chained)
                parts.append(f"{part} time / chained: median {med:.3f} [95% {lo:.3f}-{hi:.3f}], chained "
                             f"faster on {share:.0%} of rows{' (beats)' if lo > 1 else ''}")
            parts.append(f"chained drafter steps per forward {ch['draft_steps_per_forward']:.2f}")
        line = f"{ds}: " + "; ".join(parts)
        notes.append(line)
    print()
    for n in notes:
        print("- " + n)
    peaks = report["memory_mb"]["peak_by_method"]
    print(f"\npeak RSS {statistics.fmean(peaks.values()):.0f} MB (max {max(peaks.values()):.0f}); "
          f"t(1) {report['cost_curve']['step_ms']:.1f} ms; segments {len(report.get('resumed', {}).get('segments', [])) + 1}")


if __name__ == "__main__":
    main()
