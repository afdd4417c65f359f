"""`tasc-edge run`: generate for a task's test prompts and measure the method against plain.

Every row is decoded twice in one process - plain and with the chosen method - alternating
which goes first, so machine noise (OpenMP stalls, thermal drift) hits both alike. The
speed-up is per row (plain time / method time), summarised by its median.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasc_edge.cost import CostCurve, measure_cost_curve
from tasc_edge.decode import DEFAULT_MAX_DRAFT, GenerateConfig, Generation, batch_invariant, generate
from tasc_edge.drafters import METHODS, NgramDraftConfig, make_drafter
from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_text
from tasc_edge.ngram import NgramTable
from tasc_edge.runtime.llama_backend import LlamaCppBackend
from tasc_edge.model_drafter import ChainedDrafter
from tasc_edge.runtime.bundle import load_table, open_drafter, open_target
from tasc_edge.tasks import Task, build_task_table, load_task
from tasc_edge.verify import SamplingConfig

MODEL_METHODS = ("model", "chained")  # a bundle's VocabTrim drafter, alone or after the n-grams


@dataclass
class RunConfig:
    task: str = "demo"
    method: str = "tasc-spec"
    limit: int | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    model: str | None = None
    quant: str = "q4_0"
    n_ctx: int = 4096
    threads: int | None = None
    onnx_spin: bool = False  # onnxruntime workers busy-wait (quiet device); off = shared cores
    chain_ask_below: float | None = None  # chained: ask the model where n-grams are below this
    table: str | None = None  # prebuilt .npz (tasc-edge export); else built from train outputs
    bundle: str | None = None  # an exported bundle: its model, and its table for this task
    drafter: str | None = None  # --method model|chained: the bundle's drafter variant (full, k<K>)
    max_order: int = 4
    max_draft: int = DEFAULT_MAX_DRAFT
    adaptive: bool = True  # draft length from the measured cost curve and calibrated confidence
    compare: bool = True  # also decode plain for every row (speed-up, identical check)
    allow_inexact: bool = False  # run speculative greedy even if batching is not bit-exact


@dataclass
class RowResult:
    id: str
    text: str
    tokens: int
    finish_reason: str
    method_s: float
    method_decode_s: float
    tau: float
    drafted: int
    accepted: int
    plain_s: float | None = None
    plain_decode_s: float | None = None
    plain_tokens: int | None = None
    identical: bool | None = None


@dataclass
class RunSummary:
    task: str
    method: str
    model: str
    quant: str
    greedy: bool
    rows: int
    identical_rows: int | None
    speedup_median: float | None
    decode_speedup_median: float | None
    tau_mean: float
    acceptance: float
    tokens_per_s_plain: float | None
    tokens_per_s_method: float
    table_bytes: int
    cost_curve: list[float]
    step_ms: float
    results: list[RowResult] = field(default_factory=list)


def reference_table(backend: LlamaCppBackend, task: Task, max_order: int = 4) -> NgramTable:
    """Task table from the train split's reference outputs, in the target's tokenization."""
    return build_task_table([r.output for r in task.train], backend.tokenize,
                            backend.end_of_turn(), backend.tokenizer_hash, max_order)


def task_table(backend: LlamaCppBackend, task: Task, cfg: RunConfig, bundle=None) -> NgramTable:
    if cfg.table:
        return NgramTable.load(cfg.table, expect_tokenizer_hash=backend.tokenizer_hash)
    if bundle is not None and task.name in bundle.tasks:
        return load_table(bundle, task.name, backend.tokenizer_hash)
    return reference_table(backend, task, cfg.max_order)


def check_exact_batching(backend: LlamaCppBackend, k: int) -> None:
    """Refuse speculative greedy decoding where a k-token forward is not bit-identical to k
    one-token forwards. Probed near the start and past 512 cached tokens, where llama.cpp's
    kernels switch paths (see llama_backend)."""
    text = "The quick brown fox jumps over the lazy dog, and then it runs home. " * 60
    probe = backend.tokenize(text)
    positions = [16] + ([600] if backend.n_ctx > 600 + k else [])
    for pos in positions:
        if not batch_invariant(backend, probe[:pos], probe[pos : pos + k]):
            raise TascError(
                f"{backend.model_path.name}: the batched forward is not bit-identical to "
                f"one-token forwards at position {pos} (KV cache {backend.kv_type}; for llama.cpp "
                "F32/F16 weights or an F16 KV cache take other kernels), so greedy speculative "
                "output could differ from plain; use a quantized model (--quant q4_0) with the "
                "default q8_0 KV cache, or pass --allow-inexact")


def run_task(cfg: RunConfig, log=print) -> RunSummary:
    if cfg.method not in (*METHODS, *MODEL_METHODS):
        raise TascError(f"unknown --method {cfg.method!r}; choose one of "
                        f"{', '.join((*METHODS, *MODEL_METHODS))}")
    if cfg.method in MODEL_METHODS and not (cfg.bundle and cfg.drafter):
        raise TascError(f"--method {cfg.method} needs --bundle (exported with --drafter-layers) "
                        "and --drafter VARIANT (full, k<K>)")
    if cfg.max_new_tokens < 1:
        raise TascError("--max-new-tokens must be at least 1")
    task = load_task(cfg.task)
    rows = task.test[: cfg.limit] if cfg.limit else task.test
    sampling = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p)
    backend, model_path, bundle = open_target(cfg.model, cfg.quant, cfg.n_ctx, cfg.threads, cfg.bundle,
                                               cfg.onnx_spin)
    with backend, ExitStack() as stack:
        table = task_table(backend, task, cfg, bundle) if cfg.method in ("tasc-spec", "chained") else None
        # measured before the drafters are made: a chained drafter weighs its candidates by it
        curve = measure_cost_curve(backend, max_k=cfg.max_draft + 1)
        cost = curve if cfg.adaptive else None
        if cfg.method in MODEL_METHODS:
            model = open_drafter(bundle, cfg.drafter, backend, sampling, cfg.seed, cfg.threads)
            stack.callback(model.close)
            drafter = model if cfg.method == "model" else ChainedDrafter(
                make_drafter("tasc-spec", table, NgramDraftConfig(max_order=cfg.max_order)), model,
                ask_below=cfg.chain_ask_below, cost=cost)
        else:
            drafter = make_drafter(cfg.method, table, NgramDraftConfig(max_order=cfg.max_order))
        if drafter is not None and sampling.greedy and not cfg.allow_inexact:
            check_exact_batching(backend, cfg.max_draft + 1)
        quant = bundle.manifest["model"]["quant"] if bundle is not None else cfg.quant
        log(f"model {model_path.name} ({quant}), {backend.n_threads} threads; t(1) = "
            f"{curve.step_seconds * 1e3:.1f} ms, t(k)/t(1) for k=1..{len(curve.ratios)}: "
            + " ".join(f"{r:.2f}" for r in curve.ratios))
        if table is not None:
            log(f"task table: {table.n_sequences} outputs, {table.n_tokens} tokens, "
                f"{table.nbytes / 1e6:.2f} MB")
        gen_cfg = GenerateConfig(cfg.max_new_tokens, cfg.max_draft, sampling, backend.stop_tokens)
        results = []
        for i, row in enumerate(rows):
            prompt = backend.chat_prompt(row.prompt)
            rng = np.random.default_rng([cfg.seed, i])
            plain_rng = np.random.default_rng([cfg.seed, i, 1])

            def run_method() -> Generation:
                return generate(backend, prompt, drafter, gen_cfg, cost, rng)

            def run_plain() -> Generation:
                # plain decoding does not pay for hidden-state output a head drafter switched on
                backend.keep_hidden = False
                return generate(backend, prompt, None, gen_cfg, None, plain_rng)

            if cfg.compare and cfg.method != "plain":
                order = (run_plain, run_method) if i % 2 == 0 else (run_method, run_plain)
                outs = {f: f() for f in order}
                plain, method = outs[run_plain], outs[run_method]
            else:
                plain, method = None, run_method()
            results.append(_row_result(row.id, backend.detokenize(method.tokens), method, plain,
                                       sampling.greedy))
            log(f"[{i + 1}/{len(rows)}] {row.id}: {results[-1].text!r}")
        return _summarise(task.name, cfg, model_path, table, curve, results, sampling.greedy)


def _row_result(row_id: str, text: str, method: Generation, plain: Generation | None,
                greedy: bool) -> RowResult:
    s = method.stats
    r = RowResult(row_id, text, len(method.tokens), method.finish_reason, s.total_s, s.decode_s,
                  s.tau, s.drafted, s.accepted)
    if plain is not None:
        r.plain_s, r.plain_decode_s = plain.stats.total_s, plain.stats.decode_s
        r.plain_tokens = len(plain.tokens)
        r.identical = plain.tokens == method.tokens if greedy else None
    return r


def _summarise(task_name: str, cfg: RunConfig, model_path: Path, table: NgramTable | None,
               curve: CostCurve, results: list[RowResult], greedy: bool) -> RunSummary:
    compared = [r for r in results if r.plain_s is not None]
    drafted = sum(r.drafted for r in results)

    def tps(tokens: list[int], secs: list[float]) -> float:
        return sum(tokens) / sum(secs) if sum(secs) > 0 else 0.0

    return RunSummary(
        task=task_name, method=cfg.method, model=model_path.name, quant=cfg.quant, greedy=greedy,
        rows=len(results),
        identical_rows=sum(bool(r.identical) for r in compared) if compared and greedy else None,
        speedup_median=statistics.median(r.plain_s / r.method_s for r in compared) if compared else None,
        decode_speedup_median=statistics.median(
            r.plain_decode_s / r.method_decode_s for r in compared if r.method_decode_s > 0) if compared else None,
        tau_mean=statistics.fmean(r.tau for r in results) if results else 0.0,
        acceptance=sum(r.accepted for r in results) / drafted if drafted else 0.0,
        tokens_per_s_plain=tps([r.plain_tokens for r in compared], [r.plain_decode_s for r in compared]) if compared else None,
        tokens_per_s_method=tps([r.tokens for r in results], [r.method_decode_s for r in results]),
        table_bytes=table.nbytes if table is not None else 0,
        cost_curve=[round(x, 3) for x in curve.ratios], step_ms=curve.step_seconds * 1e3,
        results=results)


def format_summary(s: RunSummary) -> str:
    def f(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    ident = "n/a (sampling)" if s.identical_rows is None else f"{s.identical_rows}/{s.rows}"
    lines = [
        f"| task | method | rows | tok/s plain | tok/s {s.method} | speed-up (median, wall) | "
        "decode speed-up | tau | acceptance | identical to plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {s.task} | {s.method} | {s.rows} | {f(s.tokens_per_s_plain, '.1f')} | "
        f"{s.tokens_per_s_method:.1f} | {f(s.speedup_median, '.2f')}x | "
        f"{f(s.decode_speedup_median, '.2f')}x | {s.tau_mean:.2f} | {s.acceptance:.2f} | {ident} |",
    ]
    return "\n".join(lines)


def write_json(s: RunSummary, path: str | Path) -> None:
    data = asdict(s)
    data["schema"] = "tasc-edge.run/1"
    data["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")
