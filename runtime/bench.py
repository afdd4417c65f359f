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
  plain-unpadded ONNX backend only: plain decoding without the second row that keeps one-token
                 forwards on onnxruntime's batched kernels (see onnx_backend): the plain
                 loop a user would write, its own baseline and a fastest-plain candidate
  llama-plain    llama-cpp-python Llama.generate, greedy (the peer's baseline)
  llama-plain:Q  the same, on --model requantized to Q (e.g. llama-plain:q4_0-pure): another
                 quantization's plain decoding as a fastest-plain candidate in the same run
                 (its outputs may differ from the target's: a different model, not a baseline)
  llama-pld      llama-cpp-python with LlamaPromptLookupDecoding, as users run it
  hf-plain       Hugging Face transformers generate() on the same GGUF in torch (fp32)
  hf-pld         transformers generate(prompt_lookup_num_tokens=10)
With an ONNX --bundle the peers still run GGUF models: --model/--quant (default: the packaged
model, q4_0), which must tokenize like the bundle (checked), so TASC-spec on onnxruntime and
both peers are measured side by side in one run, each against its own plain loop.

VocabTrim drafters (bundles exported with --drafter-layers; VARIANT = full | k<K>):
  model:VARIANT  the bundle's model drafter alone (full head, or trimmed to K target ids)
  chained:VARIANT tasc-spec+gen n-grams first, the model drafter only where they have no draft
                 (with --chain-ask-below P also where their first token is below P, the
                 likelier of the two drafts kept)
  MBSU for these counts the drafter's reads: tokens / (target forwards + c * drafter steps),
  c = drafter bytes per step / target bytes per step, from the manifest.

Fixed-gamma sweep (`--gamma-sweep 1,2,4,8`, on the first `--sweep-rows` rows of each dataset):
  tasc-spec@G    TASC-spec drafting up to G tokens whenever the n-grams have a guess, with no
                 calibrated cut-off and no cost curve: tau as a function of gamma, for the plot
                 and to show what the adaptive length buys over a fixed one.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasc_edge.cost import CostCurve, measure_cost_curve
from tasc_edge.decode import DEFAULT_MAX_DRAFT, GenerateConfig
from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_text, sha256_file
from tasc_edge.predict import measure_bandwidth
from tasc_edge.prefix_cache import PrefixCache
from tasc_edge.runtime.llama_backend import KV_TYPES
from tasc_edge.runtime.bundle import open_drafter, open_target
from tasc_edge.runtime.memory import RssSampler
from tasc_edge.runtime.bench_summary import (BASELINE, OUR_METHODS, PEER_METHODS,  # noqa: F401
                                           PLAIN_METHODS, RowRun, baseline_of, drafter_variant,
                                           markdown, method_gamma, rows_of, summarise,
                                           sweep_method, time_per_token)
from tasc_edge.runtime.models import quant_names, resolve_model
from tasc_edge.runtime.peers import QUANT_PEER, check_same_tokenizer, is_peer, load_peers, peer_quant
from tasc_edge.runtime.run import check_exact_batching
from tasc_edge.runtime.bench_methods import drafter_c, method_drafters, run_method, task_table_of
from tasc_edge.tasks import load_task


@dataclass
class BenchConfig:
    datasets: list[str]
    data_root: str = "../shared/datasets"
    methods: list[str] = field(default_factory=lambda: ["plain", "pld", "tasc-spec", "llama-plain", "llama-pld"])
    limit: int = 50
    skip: int = 0  # fitting test rows passed over first (held apart from a skip-0 report)
    max_new_tokens: int = 128
    model: str | None = None
    quant: str = "q4_0"
    n_ctx: int = 4096
    threads: int | None = None
    tables: str | None = None  # folder with <dataset>.npz from `tasc-edge export`
    bundle: str | None = None  # exported bundle: its model (ONNX or GGUF) and its task tables
    max_draft: int = DEFAULT_MAX_DRAFT
    llama_pld_tokens: int = 10  # LlamaPromptLookupDecoding's default num_pred_tokens
    out: str = "bench-out"
    device: str = "auto"  # profile this bench ran on: on a real Pi, `--device pi5` tags the report
    repeats: int = 1  # runs of every method per row; the median time counts
    gamma_sweep: list[int] = field(default_factory=list)  # fixed draft lengths for tau-vs-gamma
    sweep_rows: int = 10  # rows per dataset that also run the sweep
    # MB of earlier prompts' KV kept for reuse (0 = every request cold): a task's requests share
    # their instruction / schema / tool list, which a serving device would not evaluate twice
    prefix_cache_mb: float = 0
    onnx_spin: bool = False  # onnxruntime workers busy-wait (quiet device); off = shared cores
    # chained: ask the model where the n-grams' first token is below this; a dict sets it per
    # dataset (a dataset it does not name keeps ChainedDrafter's default for its model)
    chain_ask_below: float | dict[str, float] | None = None
    resume: bool = False  # keep the rows already measured in `out`, run only the rest


def run_bench(cfg: BenchConfig, log=print) -> dict:
    unknown = [m for m in cfg.methods if m not in OUR_METHODS and not is_peer(m) and not drafter_variant(m)]
    if unknown:
        raise TascError(f"unknown method(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(OUR_METHODS + PEER_METHODS)}, {QUANT_PEER}<quant>, model:<variant>, "
                        "chained:<variant>")
    if bad := [m for m in cfg.methods if (q := peer_quant(m)) is not None and q not in quant_names()]:
        raise TascError(f"unknown quantization in {', '.join(bad)}; choose {QUANT_PEER}<quant> with one of "
                        f"{', '.join(quant_names())}")
    if cfg.repeats < 1 or any(g < 1 for g in cfg.gamma_sweep):
        raise TascError("--repeats and every --gamma-sweep value must be >= 1")
    if isinstance(cfg.chain_ask_below, dict) and (stray := set(cfg.chain_ask_below) - set(cfg.datasets)):
        raise TascError(f"--chain-ask-below names {', '.join(sorted(stray))}, not among --datasets "
                        f"{', '.join(cfg.datasets)}")
    methods = list(dict.fromkeys([*cfg.methods, *(baseline_of(m) for m in cfg.methods)]))
    sweep = [sweep_method(g) for g in cfg.gamma_sweep]
    if sweep and "plain" not in methods:
        methods.append("plain")  # the sweep's baseline
    runs: list[RowRun] = []
    bandwidth = measure_bandwidth()  # before any model is loaded: an idle machine
    memory = RssSampler().start()
    start_rss = memory.rss()
    backend, model_path, bundle = open_target(cfg.model, cfg.quant, cfg.n_ctx, cfg.threads, cfg.bundle,
                                               cfg.onnx_spin)
    onnx = bundle is not None and bundle.format == "onnx"
    # The peers run GGUF models: with an ONNX bundle they load --model/--quant (default: the
    # packaged model the bundle was exported from), checked below to tokenize like the bundle
    peer_model = resolve_model(cfg.model, cfg.quant) if onnx and any(
        m in PEER_METHODS for m in methods) else model_path
    variants = sorted({v for m in methods if (v := drafter_variant(m))})
    if variants and bundle is None:
        backend.close()
        raise TascError("model:/chained: drafters need a --bundle exported with --drafter-layers")
    if "plain-unpadded" in methods and not onnx:
        backend.close()
        raise TascError("plain-unpadded exists for the ONNX backend only (--bundle of format onnx)")
    if cfg.prefix_cache_mb > 0 and any(m.startswith("hf-") for m in methods):
        backend.close()
        raise TascError("the transformers peers (hf-*) have no prefix cache here: run them in a "
                        "bench without --prefix-cache-mb rather than cold against a warm cache")
    if cfg.prefix_cache_mb > 0:
        backend.prefix_cache = _frozen_cache(cfg.prefix_cache_mb)
    report = {"schema": "tasc-edge.bench/1", "command": " ".join(sys.argv), "config": asdict(cfg),
              "model": model_path.name, "model_bytes": model_path.stat().st_size,
              "model_sha256": sha256_file(model_path), "machine": machine_info(),
              "device": cfg.device, "bandwidth_gbs": bandwidth,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "memory_mb": {"start": start_rss / 1e6},
              "backend": "onnxruntime" if onnx else "llama.cpp"}
    try:
        prior = _prior_rows(cfg, report, methods, {v: bundle.manifest.get("drafters", {}).get(v)
                                                   for v in variants}) if cfg.resume else {}
    except TascError:
        backend.close()
        raise
    with backend:
        report["memory_mb"]["after_target"] = memory.rss() / 1e6
        report["kv_cache"] = backend.kv_type
        check_exact_batching(backend, cfg.max_draft + 1)
        kv = (KV_TYPES["q8_0"], KV_TYPES["f16"]) if onnx else (
            KV_TYPES[backend.type_k], KV_TYPES[backend.type_v])
        # `llama-plain:<quant>` requantizes --model's file (the packaged source, not the
        # target's already-quantized copy); its tokenizer is checked like every peer's
        peers = load_peers(methods, peer_model, cfg.n_ctx, backend.n_threads, cfg.llama_pld_tokens, kv,
                           requantized=lambda quant: resolve_model(cfg.model, quant))
        if peers:
            report["peer_model"] = peer_model.name
            report["peer_models"] = {m: p.model_path.name for m, p in peers.items() if hasattr(p, "model_path")}
            try:
                check_same_tokenizer(peers, backend)
            except TascError:
                for peer in peers.values():
                    peer.close()
                raise
        report["memory_mb"]["after_peers"] = memory.rss() / 1e6
        if cfg.prefix_cache_mb > 0:  # the llama.cpp peers: same budget, same freezing
            for peer in peers.values():
                peer.prefix_cache = _frozen_cache(cfg.prefix_cache_mb)
        # one drafter model per method: a drafter's KV cache follows that method's generations
        model_drafters = {m: open_drafter(bundle, v, backend, n_threads=backend.n_threads)
                          for m in methods if (v := drafter_variant(m))}
        report["drafters"] = {v: bundle.manifest["drafters"][v] for v in variants}
        report["drafter_c"] = {v: drafter_c(report["drafters"][v], model_drafters[m])
                               for m in model_drafters if (v := drafter_variant(m))}
        report["memory_mb"]["after_drafters"] = memory.rss() / 1e6
        curve = measure_cost_curve(backend, max_k=16)
        report["cost_curve"] = {"step_ms": curve.step_seconds * 1e3, "ratios": list(curve.ratios)}
        log(f"{model_path.name}: t(1) {curve.step_seconds * 1e3:.1f} ms, t(k)/t(1) "
            + " ".join(f"{r:.2f}" for r in curve.ratios))
        gen_cfg = GenerateConfig(cfg.max_new_tokens, cfg.max_draft, stop_tokens=backend.stop_tokens)
        table_bytes: dict[str, dict[str, int]] = {}
        started, done_rows = time.perf_counter(), 0
        restore = _interrupt_on_signals()
        total_rows = cfg.limit * len(cfg.datasets) - sum(1 for k in prior if k[0] in cfg.datasets)
        try:
            for name in cfg.datasets:
                task = load_task(Path(cfg.data_root) / name)
                drafters = method_drafters(name, task, backend, cfg, methods + sweep, bundle, model_drafters,
                                     curve)
                table_bytes[name] = {m: t.nbytes for m, d in drafters.items()
                                     if (t := task_table_of(d)) is not None}
                rows, prompts, passed = [], [], 0
                for row in task.test:  # the first `limit` rows whose prompt fits the context
                    if len(rows) == cfg.limit:
                        break
                    prompt = backend.chat_prompt(row.prompt)
                    if len(prompt) + cfg.max_new_tokens > backend.n_ctx:
                        report.setdefault("skipped_rows", {}).setdefault(name, []).append(row.id)
                        continue
                    if passed < cfg.skip:
                        passed += 1
                        continue
                    rows.append(row)
                    prompts.append(prompt)
                for i, (row, prompt) in enumerate(zip(rows, prompts)):
                    if (name, row.id) in prior:  # measured by the run being resumed
                        runs.extend(prior[(name, row.id)])
                        continue
                    row_methods = methods + (sweep if i < cfg.sweep_rows else [])
                    order = row_methods[i % len(row_methods):] + row_methods[: i % len(row_methods)]
                    tries: dict[str, list[RowRun]] = {m: [] for m in order}
                    for _ in range(cfg.repeats):  # rounds, so noise hits every method alike
                        for m in order:
                            with memory.phase(m):
                                tries[m].append(run_method(m, name, row, prompt, backend, drafters,
                                                         peers, gen_cfg, curve, cfg))
                    runs.extend(_median_run(tries[m]) for m in order)
                    if cfg.prefix_cache_mb > 0:
                        _remember_prompt(prompt, backend, peers)
                    done_rows += 1
                    rate = done_rows / (time.perf_counter() - started)
                    log(f"{name} [{i + 1}/{len(rows)}] {done_rows}/{total_rows} rows, ETA "
                        f"{(total_rows - done_rows) / rate / 60:.1f} min | " + "  ".join(
                            f"{r.method} {r.total_s * 1e3:.0f}ms" for r in runs[-len(order):]))
                # a checkpoint per dataset: even kill -9 keeps those
                _finish(report, runs, cfg, curve, memory, table_bytes, final=False)
        except KeyboardInterrupt:
            log("interrupted: writing the rows that finished")
            report["interrupted"] = True
        except Exception as e:  # a crash still leaves the rows that finished, then re-raises
            report["interrupted"] = True
            report["error"] = f"{type(e).__name__}: {e}"
            _finish(report, runs, cfg, curve, memory, table_bytes)
            raise
        finally:
            restore()
            for peer in [*peers.values(), *model_drafters.values()]:
                peer.close()
            memory.stop()
    _finish(report, runs, cfg, curve, memory, table_bytes)
    return report


def _prior_rows(cfg: BenchConfig, report: dict, methods: list[str],
                drafters: dict) -> dict[tuple[str, str], list[RowRun]]:
    """The rows an earlier run with this very configuration (--limit aside) finished in
    cfg.out, by (dataset, row id); only rows every method finished count. Each row's methods
    ran side by side in one process, so its ratios hold; the report lists every run segment
    with its own cost curve, and `predicted` columns use the newest one."""
    path = Path(cfg.out) / "bench.json"
    if not path.is_file():
        raise TascError(f"--resume: no {path} to resume; run without --resume first")
    old = json.loads(path.read_text())
    loose = ("limit", "out", "resume", "datasets")  # what a resumed run may change
    mine = {k: v for k, v in asdict(cfg).items() if k not in loose}
    theirs = {k: v for k, v in old.get("config", {}).items() if k not in loose and k in mine}
    diff = sorted(k for k in mine if theirs.get(k, mine[k]) != mine[k])
    if old.get("schema") != report["schema"] or diff:
        raise TascError(f"--resume: {path} was measured with other settings ({', '.join(diff) or 'schema'}); "
                        "resume with the same command (only --limit may change) or use another --out")
    for key in ("model_sha256", "backend"):
        if old.get(key) != report[key]:
            raise TascError(f"--resume: {path} measured another model or backend ({key} differs)")
    if old.get("drafters", {}) != drafters:
        raise TascError(f"--resume: the drafters in {path} are not this bundle's")
    here, there = report["machine"], old.get("machine", {})
    if any(here.get(k) != there.get(k) for k in ("platform", "machine", "processor", "cpus")):
        raise TascError(f"--resume: {path} was measured on another machine; rows would not compare")
    by_row: dict[tuple[str, str], list[RowRun]] = {}
    for run in rows_of(old.get("rows", [])):
        by_row.setdefault((run.dataset, run.row), []).append(run)
    kept = {k: v for k, v in by_row.items() if set(methods) <= {r.method for r in v}}
    segments = old.get("resumed", {}).get("segments", []) + [{
        "started": old.get("started"), "ended": old.get("finished") or old.get("checkpoint"),
        "rows": len(kept), "cost_curve": old.get("cost_curve")}]
    report["resumed"] = {"segments": segments, "peak_mb": old.get("memory_mb", {}).get("peak_by_method", {})}
    return kept


def _frozen_cache(mb: float) -> PrefixCache:
    cache = PrefixCache.of_megabytes(mb)
    cache.frozen = True  # only _remember_prompt stores (not the exactness check, not a method)
    return cache


def _remember_prompt(prompt: list[int], backend, peers: dict) -> None:
    """Put this row's prompt into every prefix cache, untimed, after all methods ran: each
    method of a row meets the cache the earlier rows left (the caches are frozen during the
    timed runs), never its own prompt evaluated by the method before it."""
    caches = [backend.prefix_cache, *(p.prefix_cache for p in peers.values())]
    for c in caches:
        c.frozen = False
    backend.prefill([])
    backend.prefill(prompt[:-1])  # every run starts with prefill([]) / cold() anyway
    for peer in peers.values():
        peer.remember(prompt)
    for c in caches:
        c.frozen = True


def _median_run(tries: list[RowRun]) -> RowRun:
    """The run with the median wall time (outputs are identical across repeats when greedy)."""
    ok = sorted((r for r in tries if not r.error), key=lambda r: r.total_s)
    return ok[(len(ok) - 1) // 2] if ok else tries[0]


def _interrupt_on_signals():
    """Ctrl-C, and SIGTERM or SIGINT for a bench started in the background (where shells
    ignore SIGINT), raise KeyboardInterrupt so the finished rows are written."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


def _finish(report: dict, runs: list[RowRun], cfg: BenchConfig, curve: CostCurve,
            memory: RssSampler, table_bytes: dict, final: bool = True) -> None:
    peaks = {m: v / 1e6 for m, v in memory.peak.items()}
    for m, mb in report.get("resumed", {}).get("peak_mb", {}).items():  # the runs resumed
        peaks[m] = max(mb, peaks.get(m, 0.0))
    report["memory_mb"]["peak_by_method"] = peaks
    report["table_bytes"] = table_bytes
    if cfg.prefix_cache_mb > 0:
        report["prefix_cache"] = {"mb": cfg.prefix_cache_mb, "mode": "earlier rows' prompts, frozen "
                                  "while a request is timed"}
    report["results"] = _summarise_report(report, runs, cfg.methods, cfg.gamma_sweep, curve)
    report["finished" if final else "checkpoint"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if final:
        report.pop("partial", None)
    else:
        report["partial"] = True  # what a killed run leaves: the datasets finished so far
    write_report(report, runs, Path(cfg.out))


def machine_info() -> dict:
    import importlib.metadata as md
    import os

    versions = {}
    for pkg in ("tasc-edge", "numpy", "llama-cpp-python", "torch", "transformers", "psutil"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "packages": versions}


def _summarise_report(report: dict, runs: list[RowRun], methods: list[str], gamma_sweep: list[int],
                      curve: CostCurve) -> list[dict]:
    """summarise() with what the report knows: the drafters' c and each method's peak memory."""
    # (reports before drafter_c took c from the manifest)
    c_of = report.get("drafter_c") or {v: e["c"] for v, e in report.get("drafters", {}).items()}
    c = {m: c_of[v] for m in methods if (v := drafter_variant(m)) and v in c_of}
    return summarise(runs, methods + [sweep_method(g) for g in gamma_sweep], curve,
                     report["memory_mb"]["peak_by_method"], c)


def resummarise(out: Path) -> dict:
    """Recompute a finished run's summary and bench.md from its rows (after the summary
    learned a new column); the measurements themselves are not touched."""
    data = json.loads((out / "bench.json").read_text())
    runs = rows_of(data.pop("rows"))
    cfg = data["config"]
    curve = CostCurve(tuple(data["cost_curve"]["ratios"]), data["cost_curve"]["step_ms"] / 1e3)
    data["results"] = _summarise_report(data, runs, cfg["methods"], cfg["gamma_sweep"], curve)
    write_report(data, runs, out)
    return data


def write_report(report: dict, runs: list[RowRun], out: Path) -> None:
    atomic_write_text(out / "bench.json", json.dumps({**report, "rows": [asdict(r) for r in runs]}) + "\n")
    atomic_write_text(out / "bench.md", markdown(report))


