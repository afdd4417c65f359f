"""`tasc-edge bench`: methods side by side on the same rows, in one process.

For every row all methods run back to back, in an order rotated per row, so machine noise
(OpenMP stalls, thermal drift, the other core busy) hits every method alike. Each method's
speed-up is the per-row wall-clock ratio against *its own* plain baseline (ours for our
drafters, llama-cpp-python's `Llama.generate` for its prompt-lookup peer), and also against
the fastest plain configuration in the run. Ctrl-C writes what finished as a valid report.

Methods:
  plain          our decode loop, no drafts
  pld            context-only n-gram lookup (our adaptive drafter, no task table)
  tasc-spec      task table from the train split's reference outputs + context
  tasc-spec+gen  task table from `tasc-edge export` (reference + the target's own generations)
  llama-plain    llama-cpp-python Llama.generate, greedy (the peer's baseline)
  llama-pld      llama-cpp-python with LlamaPromptLookupDecoding, as users run it
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasc_edge.cost import measure_cost_curve
from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_text, sha256_file
from tasc_edge.ngram import NgramTable
from tasc_edge.runtime.llama_backend import LlamaCppBackend
from tasc_edge.runtime.models import resolve_model
from tasc_edge.runtime.run import check_exact_batching
from tasc_edge.tasks import build_task_table, load_task

OUR_METHODS = ("plain", "pld", "tasc-spec", "tasc-spec+gen")
PEER_METHODS = ("llama-plain", "llama-pld")
BASELINE = {"plain": "plain", "pld": "plain", "tasc-spec": "plain", "tasc-spec+gen": "plain",
            "llama-plain": "llama-plain", "llama-pld": "llama-plain"}


@dataclass
class BenchConfig:
    datasets: list[str]
    data_root: str = "../shared/datasets"
    methods: list[str] = field(default_factory=lambda: ["plain", "pld", "tasc-spec", "llama-plain", "llama-pld"])
    limit: int = 50
    max_new_tokens: int = 128
    model: str | None = None
    quant: str = "q4_0"
    n_ctx: int = 4096
    threads: int | None = None
    tables: str | None = None  # folder with <dataset>.npz from `tasc-edge export`
    max_draft: int = 12
    llama_pld_tokens: int = 10  # LlamaPromptLookupDecoding's default num_pred_tokens
    out: str = "bench-out"


@dataclass
class RowRun:
    dataset: str
    row: str
    method: str
    tokens: list[int]
    total_s: float
    tau: float | None
    drafted: int | None
    accepted: int | None


def run_bench(cfg: BenchConfig, log=print) -> dict:
    unknown = [m for m in cfg.methods if m not in OUR_METHODS + PEER_METHODS]
    if unknown:
        raise TascError(f"unknown method(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(OUR_METHODS + PEER_METHODS)}")
    methods = list(dict.fromkeys([*cfg.methods, *(BASELINE[m] for m in cfg.methods)]))
    model_path = resolve_model(cfg.model, cfg.quant)
    runs: list[RowRun] = []
    report = {"schema": "tasc-edge.bench/1", "command": " ".join(sys.argv), "config": asdict(cfg),
              "model": model_path.name, "model_sha256": sha256_file(model_path),
              "machine": {"platform": platform.platform(), "python": platform.python_version()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with LlamaCppBackend(model_path, n_ctx=cfg.n_ctx, n_threads=cfg.threads) as backend:
        check_exact_batching(backend, cfg.max_draft + 1)
        peers = _load_peers(model_path, cfg, backend.n_threads, methods)
        curve = measure_cost_curve(backend, max_k=cfg.max_draft + 1)
        report["cost_curve"] = {"step_ms": curve.step_seconds * 1e3, "ratios": list(curve.ratios)}
        log(f"{model_path.name}: t(1) {curve.step_seconds * 1e3:.1f} ms, t(k)/t(1) "
            + " ".join(f"{r:.2f}" for r in curve.ratios))
        gen_cfg = GenerateConfig(cfg.max_new_tokens, cfg.max_draft, stop_tokens=backend.stop_tokens)
        try:
            for name in cfg.datasets:
                task = load_task(Path(cfg.data_root) / name)
                drafters = _drafters(name, task, backend, cfg, methods)
                rows = task.test[: cfg.limit]
                for i, row in enumerate(rows):
                    prompt = backend.chat_prompt(row.prompt)
                    order = methods[i % len(methods):] + methods[: i % len(methods)]
                    for m in order:
                        if m in PEER_METHODS:
                            runs.append(_peer_run(peers[m], prompt, backend.stop_tokens, cfg, name, row.id, m))
                        else:
                            g = generate(backend, prompt, drafters[m], gen_cfg, curve)
                            s = g.stats
                            runs.append(RowRun(name, row.id, m, g.tokens, s.total_s, s.tau, s.drafted, s.accepted))
                    log(f"{name} [{i + 1}/{len(rows)}] " + "  ".join(
                        f"{r.method} {r.total_s * 1e3:.0f}ms" for r in runs[-len(order):]))
        except KeyboardInterrupt:
            log("interrupted: writing the rows that finished")
            report["interrupted"] = True
        finally:
            for llm in peers.values():
                llm.close()
    report["results"] = summarise(runs, cfg.methods)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(cfg.out)
    atomic_write_text(out / "bench.json", json.dumps({**report, "rows": [asdict(r) for r in runs]}) + "\n")
    atomic_write_text(out / "bench.md", markdown(report))
    return report


def _drafters(name: str, task, backend: LlamaCppBackend, cfg: BenchConfig, methods: list[str]) -> dict:
    drafters: dict = {"plain": None}
    if "pld" in methods:
        drafters["pld"] = make_drafter("pld", None)
    if "tasc-spec" in methods:
        table = build_task_table([r.output for r in task.train], backend.tokenize,
                                 backend.end_of_turn(), backend.tokenizer_hash)
        drafters["tasc-spec"] = make_drafter("tasc-spec", table)
    if "tasc-spec+gen" in methods:
        if not cfg.tables:
            raise TascError("tasc-spec+gen needs --tables DIR holding <dataset>.npz from tasc-edge export")
        table = NgramTable.load(Path(cfg.tables) / f"{name}.npz", backend.tokenizer_hash)
        drafters["tasc-spec+gen"] = make_drafter("tasc-spec", table)
    return drafters


def _load_peers(model_path: Path, cfg: BenchConfig, threads: int, methods: list[str]) -> dict:
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    peers = {}
    common = dict(model_path=str(model_path), n_ctx=cfg.n_ctx, n_threads=threads,
                  n_threads_batch=threads, flash_attn=True, verbose=False)
    if "llama-plain" in methods:
        peers["llama-plain"] = Llama(**common)
    if "llama-pld" in methods:
        peers["llama-pld"] = Llama(**common, draft_model=LlamaPromptLookupDecoding(
            num_pred_tokens=cfg.llama_pld_tokens))
    return peers


def _peer_run(llm, prompt: list[int], stops: frozenset[int], cfg: BenchConfig, dataset: str,
              row: str, method: str) -> RowRun:
    out: list[int] = []
    t = time.perf_counter()
    for tok in llm.generate(list(prompt), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True):
        if tok in stops:
            break
        out.append(int(tok))
        if len(out) >= cfg.max_new_tokens:
            break
    return RowRun(dataset, row, method, out, time.perf_counter() - t, None, None, None)


def summarise(runs: list[RowRun], methods: list[str]) -> list[dict]:
    by = {(r.dataset, r.row, r.method): r for r in runs}
    results = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        rows = list(dict.fromkeys(r.row for r in runs if r.dataset == dataset))
        for m in methods:
            base = BASELINE[m]
            pairs = [(by[(dataset, row, m)], by[(dataset, row, base)]) for row in rows
                     if (dataset, row, m) in by and (dataset, row, base) in by]
            if not pairs:
                continue
            plains = [b for b in ("plain", "llama-plain") if all((dataset, row, b) in by for row in rows)]
            fastest = min(plains, key=lambda b: sum(by[(dataset, row, b)].total_s for row in rows))
            ratios = [p.total_s / r.total_s for r, p in pairs]
            vs_fastest = [by[(dataset, r.row, fastest)].total_s / r.total_s for r, _ in pairs]
            drafted = sum(r.drafted or 0 for r, _ in pairs)
            q1, q3 = np.percentile(ratios, [25, 75]) if len(ratios) > 1 else (ratios[0], ratios[0])
            results.append({
                "dataset": dataset, "method": m, "baseline": base, "rows": len(pairs),
                "identical_rows": sum(r.tokens == p.tokens for r, p in pairs),
                "identical_to_our_plain": sum(r.tokens == by[(dataset, r.row, "plain")].tokens
                                              for r, _ in pairs if (dataset, r.row, "plain") in by),
                "speedup_median": statistics.median(ratios), "speedup_iqr": [float(q1), float(q3)],
                "fastest_plain": fastest, "speedup_vs_fastest_plain": statistics.median(vs_fastest),
                "tau_mean": statistics.fmean(r.tau for r, _ in pairs) if pairs[0][0].tau is not None else None,
                "acceptance": (sum(r.accepted or 0 for r, _ in pairs) / drafted) if drafted else None,
                "tokens_per_s": sum(len(r.tokens) for r, _ in pairs) / sum(r.total_s for r, _ in pairs),
                "mean_tokens": statistics.fmean(len(r.tokens) for r, _ in pairs),
            })
    return results


def markdown(report: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [f"# tasc-edge bench: {report['model']}", "",
             f"t(1) = {report.get('cost_curve', {}).get('step_ms', 0):.1f} ms; t(k)/t(1) = "
             + " ".join(f"{r:.2f}" for r in report.get("cost_curve", {}).get("ratios", [])), "",
             "| dataset | method | rows | identical | speed-up vs own plain (median [IQR]) | "
             "vs fastest plain | tau | acceptance | tok/s (wall) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['rows']} | {r['identical_rows']}/{r['rows']} | "
            f"{r['speedup_median']:.2f}x [{r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f}] | "
            f"{r['speedup_vs_fastest_plain']:.2f}x ({r['fastest_plain']}) | {f(r['tau_mean'], '.2f')} | "
            f"{f(r['acceptance'], '.2f')} | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"
