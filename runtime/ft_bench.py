"""`tasc-edge ft bench`: TASC-ft models side by side on one task's test rows, in one process.

Models are exported bundles given by name, e.g. `base=b/base ft=b/e2e-ft ftx=b/e2e-ftx` (the
base model, plain fine-tuning, fine-tuning on the expanded vocabulary). For every row, every
(model, method) pair runs back to back in an order rotated per row, so machine noise hits all
of them alike. Methods: `plain`, and `tasc-spec` with the bundle's own n-gram table for the task
(tables are per tokenizer: an expanded model needs the table its bundle built).

Per pair: rows, rows identical to that model's plain output, tokens per output (what
expansion shrinks), tokens/s and characters/s (tokens differ across vocabularies: characters
are comparable), wall-clock speed-up per row against the baseline model's plain run (default
`ft`: the model whose quality TASC-ft must keep) and against its own plain run, tau,
acceptance, exact match and chrF against the reference, and the quality change against the
baseline's plain output on the same rows (paired mean, bootstrap 95% interval): with 50 rows
one row of exact match is 2 points, so a "within 2 points" claim needs the interval.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasc_edge.cost import measure_cost_curve
from tasc_edge.decode import DEFAULT_MAX_DRAFT, GenerateConfig, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_text
from tasc_edge.metrics import chrf, exact_match
from tasc_edge.tasks import load_task

METHODS = ("plain", "tasc-spec")


@dataclass
class FtBenchConfig:
    task: str  # task folder (train.jsonl + test.jsonl)
    bundles: dict[str, str]  # model name -> bundle folder
    baseline: str = "ft"  # its plain run is every pair's speed baseline
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    limit: int = 50
    max_new_tokens: int = 128
    max_draft: int = DEFAULT_MAX_DRAFT
    n_ctx: int = 2048
    threads: int | None = None
    out: str = "ft-bench-out"


@dataclass
class FtRun:
    model: str
    method: str
    row: str
    tokens: int
    chars: int
    total_s: float
    identical: bool | None  # same tokens as this model's plain run (None for plain itself)
    exact: float
    chrf: float
    tau: float
    drafted: int
    accepted: int


def run_ft_bench(cfg: FtBenchConfig, log=print) -> dict:
    from tasc_edge.runtime.bench import _interrupt_on_signals, machine_info
    from tasc_edge.runtime.bundle import load_bundle, load_table, open_backend
    from tasc_edge.runtime.run import check_exact_batching

    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise TascError(f"unknown ft bench method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if cfg.baseline not in cfg.bundles:
        raise TascError(f"--baseline {cfg.baseline!r} is not one of the models {', '.join(cfg.bundles)}")
    task = load_task(cfg.task)
    backends, drafters, curves, info = {}, {}, {}, {}
    try:
        for name, path in cfg.bundles.items():
            bundle = load_bundle(path)
            b = backends[name] = open_backend(bundle, n_ctx=cfg.n_ctx, n_threads=cfg.threads)
            check_exact_batching(b, cfg.max_draft + 1)
            curves[name] = measure_cost_curve(b, max_k=16)
            if "tasc-spec" in cfg.methods:
                if task.name not in bundle.tasks:
                    raise TascError(f"bundle {path} has no table for {task.name}; export it with --task")
                drafters[name] = make_drafter("tasc-spec", load_table(bundle, task.name, b.tokenizer_hash))
            info[name] = {"bundle": str(path), "format": bundle.format, "model_bytes": bundle.model_path.stat().st_size,
                          "n_vocab": b.n_vocab, "tokenizer_hash": b.tokenizer_hash,
                          "step_ms": curves[name].step_seconds * 1e3}
            log(f"{name}: {bundle.model_path.name}, vocab {b.n_vocab}, t(1) {curves[name].step_seconds * 1e3:.1f} ms")
        rows, prompts = [], {}  # the first `limit` rows whose prompt fits every model, rendered once
        for r in task.test:
            if len(rows) == cfg.limit:
                break
            rendered = {name: b.chat_prompt(r.prompt) for name, b in backends.items()}
            if all(len(rendered[n]) + cfg.max_new_tokens <= b.n_ctx for n, b in backends.items()):
                rows.append(r)
                prompts.update({(n, r.id): p for n, p in rendered.items()})
        pairs = [(m, meth) for m in cfg.bundles for meth in cfg.methods]
        report = {"schema": "tasc-edge.ft-bench/1", "command": " ".join(sys.argv), "config": asdict(cfg),
                  "task": task.name, "models": info, "machine": machine_info(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        runs: list[FtRun] = []
        restore = _interrupt_on_signals()
        started = time.perf_counter()
        try:
            for i, row in enumerate(rows):
                order = pairs[i % len(pairs):] + pairs[:i % len(pairs)]
                done: dict[tuple[str, str], tuple[list[int], FtRun]] = {}
                for name, meth in order:
                    b = backends[name]
                    b.prefill([])  # cold: no method reuses the prompt another one just evaluated
                    g = generate(b, prompts[(name, row.id)], drafters.get(name) if meth != "plain" else None,
                                 GenerateConfig(cfg.max_new_tokens, cfg.max_draft, stop_tokens=b.stop_tokens),
                                 curves[name])
                    text = b.detokenize(g.tokens)
                    done[(name, meth)] = (g.tokens, FtRun(
                        name, meth, row.id, len(g.tokens), len(text), g.stats.total_s, None,
                        exact_match(text, row.output), chrf(text, row.output), g.stats.tau,
                        g.stats.drafted, g.stats.accepted))
                for (name, meth), (tokens, run) in done.items():
                    if meth != "plain" and (name, "plain") in done:
                        run.identical = tokens == done[(name, "plain")][0]
                    runs.append(run)
                rate = (i + 1) / (time.perf_counter() - started)
                log(f"{task.name} [{i + 1}/{len(rows)}] ETA {(len(rows) - i - 1) / rate / 60:.1f} min | "
                    + "  ".join(f"{n}/{m} {r.total_s * 1e3:.0f}ms {r.tokens}t" for (n, m), (_, r) in done.items()))
        except KeyboardInterrupt:
            log("interrupted: writing the rows that finished")
            report["interrupted"] = True
        finally:
            restore()
    finally:
        for b in backends.values():
            b.close()
    report["results"] = summarise_ft(runs, pairs, cfg.baseline)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(cfg.out)
    atomic_write_text(out / "ft-bench.json", json.dumps({**report, "rows": [asdict(r) for r in runs]}) + "\n")
    atomic_write_text(out / "ft-bench.md", ft_markdown(report))
    return report


def summarise_ft(runs: list[FtRun], pairs: list[tuple[str, str]], baseline: str) -> list[dict]:
    by = {(r.model, r.method, r.row): r for r in runs}
    rows = list(dict.fromkeys(r.row for r in runs))
    results = []
    for name, meth in pairs:
        mine = [by[(name, meth, row)] for row in rows if (name, meth, row) in by]
        if not mine:
            continue
        base_rows = [(by[(baseline, "plain", r.row)], r) for r in mine if (baseline, "plain", r.row) in by]
        vs_base = [b.total_s / r.total_s for b, r in base_rows]
        vs_own = [by[(name, "plain", r.row)].total_s / r.total_s for r in mine if (name, "plain", r.row) in by]
        secs = sum(r.total_s for r in mine)
        drafted = sum(r.drafted for r in mine)
        results.append({
            "model": name, "method": meth, "rows": len(mine),
            "identical_rows": None if meth == "plain" else sum(bool(r.identical) for r in mine),
            "tokens_per_output": statistics.fmean(r.tokens for r in mine),
            "tokens_per_s": sum(r.tokens for r in mine) / secs, "chars_per_s": sum(r.chars for r in mine) / secs,
            "speedup_vs_baseline": statistics.median(vs_base) if vs_base else None,
            "speedup_vs_baseline_iqr": [float(x) for x in np.percentile(vs_base, [25, 75])] if vs_base else None,
            "speedup_vs_own_plain": statistics.median(vs_own) if vs_own else None,
            "tau_mean": statistics.fmean(r.tau for r in mine),
            "acceptance": sum(r.accepted for r in mine) / drafted if drafted else None,
            "exact_match": statistics.fmean(r.exact for r in mine), "chrf": statistics.fmean(r.chrf for r in mine),
            "exact_vs_baseline": paired_delta([100 * (r.exact - b.exact) for b, r in base_rows]),
            "chrf_vs_baseline": paired_delta([r.chrf - b.chrf for b, r in base_rows]),
        })
    return results


def paired_delta(diffs: list[float], draws: int = 2000, seed: int = 0) -> list[float] | None:
    """[mean, low, high]: the mean per-row difference and a percentile-bootstrap 95% interval."""
    if not diffs:
        return None
    d = np.asarray(diffs, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), (draws, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(d.mean()), float(low), float(high)]


def ft_markdown(report: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    base = report["config"]["baseline"]
    lines = [f"# tasc-edge ft bench: {report['task']}", "",
             "| model | method | rows | identical to own plain | tokens/output | speed-up vs "
             f"{base}/plain, median [IQR] | vs own plain | tau | acceptance | tok/s | chars/s | exact | chrF | "
             f"exact vs {base}, points [95% CI] | chrF vs {base} [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        iqr = r["speedup_vs_baseline_iqr"]
        lines.append(
            f"| {r['model']} | {r['method']} | {r['rows']} | "
            f"{'-' if r['identical_rows'] is None else str(r['identical_rows']) + '/' + str(r['rows'])} | "
            f"{r['tokens_per_output']:.1f} | {f(r['speedup_vs_baseline'], '.2f')}x "
            f"[{f(iqr and iqr[0], '.2f')}-{f(iqr and iqr[1], '.2f')}] | {f(r['speedup_vs_own_plain'], '.2f')}x | "
            f"{r['tau_mean']:.2f} | {f(r['acceptance'], '.2f')} | {r['tokens_per_s']:.1f} | "
            f"{r['chars_per_s']:.0f} | {r['exact_match']:.2f} | {r['chrf']:.1f} | "
            f"{_delta(r.get('exact_vs_baseline'))} | {_delta(r.get('chrf_vs_baseline'))} |")
    models = report.get("models", {})
    lines += ["", "Models: " + "; ".join(f"{n}: vocab {m['n_vocab']}, {m['model_bytes'] / 1e6:.1f} MB, "
                                         f"t(1) {m['step_ms']:.1f} ms" for n, m in models.items())]
    if report.get("interrupted"):
        lines += ["", "**Interrupted**: only the rows that finished are counted."]
    return "\n".join(lines) + "\n"


def _delta(d: list[float] | None) -> str:
    return "-" if d is None else f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]"
