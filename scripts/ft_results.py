"""Summarise a TASC-ft experiment as Markdown: expansion rounds, training runs, and the ft bench
reports side by side. Usage:

    python scripts/ft_results.py --ft ft/ --bench ft-bench-e2e ft-bench-snips --tasks e2e_nlg snips_slots

expects <ft>/<task>-x/expansion.json, <ft>/<task>-ft/ft.json, <ft>/<task>-ftx/ft.json and
<bench>/ft-bench.json (one bench folder per task, same order as --tasks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", required=True)
    ap.add_argument("--bench", nargs="+", required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    args = ap.parse_args()
    root = Path(args.ft)
    out = ["| task | new tokens | tokens per train output, base -> after each round | compression |",
           "|---|---|---|---|"]
    for t in args.tasks:
        e = json.loads((root / f"{t}-x" / "expansion.json").read_text())
        base = e["rounds"][0]["tokens_per_output"] * e["rounds"][0]["compression"]
        out.append(f"| {t} | {len(e['tokens'])} | {base:.2f} -> " + " / ".join(
            f"{r['tokens_per_output']:.2f}" for r in e["rounds"]) + f" | {e['rounds'][-1]['compression']:.2f}x |")
    out += ["", "| run | steps x batch | examples seen | loss first 10 -> last 10 steps (per token) | "
                "training time | hardware |", "|---|---|---|---|---|---|"]
    for t in args.tasks:
        for kind in ("ft", "ftx"):
            f = json.loads((root / f"{t}-{kind}" / "ft.json").read_text())
            c = f["config"]
            hw = f["hardware"]
            out.append(f"| {t}-{kind} | {c['steps']} x {c['batch_size']} | {c['steps'] * c['batch_size']} | "
                       f"{f['loss_first10']:.2f} -> {f['loss_last10']:.2f} | {f['seconds'] / 60:.1f} min | "
                       f"{hw['processor']}, {hw['torch_threads']} torch threads, {hw['device']} |")
    for t, b in zip(args.tasks, args.bench):
        r = json.loads((Path(b) / "ft-bench.json").read_text())
        by = {(x["model"], x["method"]): x for x in r["results"]}
        metric = "exact_match" if t.startswith("snips") else "chrf"
        scale = 100.0 if metric == "exact_match" else 1.0
        out += ["", f"**{t}** ({r['results'][0]['rows']} test rows, {metric.replace('_', ' ')}; speed-ups are "
                    "per-row wall-clock medians against ft/plain, measured interleaved in one run):", "",
                "| model | method | tokens/output | tok/s | chars/s | speed-up vs ft/plain | vs own plain | "
                f"tau | acceptance | identical | {metric.replace('_', ' ')} |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (m, meth), x in by.items():
            ident = "-" if x["identical_rows"] is None else f"{x['identical_rows']}/{x['rows']}"
            acc = "-" if x["acceptance"] is None else f"{x['acceptance']:.2f}"
            out.append(f"| {m} | {meth} | {x['tokens_per_output']:.1f} | {x['tokens_per_s']:.0f} | "
                       f"{x['chars_per_s']:.0f} | {x['speedup_vs_baseline']:.2f}x | {x['speedup_vs_own_plain']:.2f}x | "
                       f"{x['tau_mean']:.2f} | {acc} | {ident} | {x[metric] * scale:.1f} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
