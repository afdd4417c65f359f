"""One bench method on one row: which drafter each method name gets, and the cold, timed run.

`tasc-edge bench` (runtime/bench.py) loops rows and methods around these two functions;
scripts that A/B a drafter setting (scripts/policy_ab.py) call them the same way, so their
runs are timed and recorded exactly as the bench's are.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tasc_edge.cost import CostCurve
from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import NgramDraftConfig, make_drafter
from tasc_edge.errors import TascError
from tasc_edge.metrics import chrf, exact_match
from tasc_edge.model_drafter import ChainedDrafter
from tasc_edge.ngram import NgramTable
from tasc_edge.runtime.bench_summary import RowRun, drafter_variant, method_gamma
from tasc_edge.runtime.bundle import load_table
from tasc_edge.runtime.llama_backend import LlamaCppBackend
from tasc_edge.runtime.peers import FirstForwardClock, is_peer, timed
from tasc_edge.runtime.run import reference_table

if TYPE_CHECKING:  # bench.py imports this module; the config is only a type here
    from tasc_edge.runtime.bench import BenchConfig


def exported_table(name: str, backend, cfg: BenchConfig, bundle) -> NgramTable:
    if bundle is not None:
        if name not in bundle.tasks:
            raise TascError(f"bundle {bundle.path} has no table for {name} (it has "
                            f"{', '.join(bundle.tasks) or 'none'})")
        return load_table(bundle, name, backend.tokenizer_hash)
    if not cfg.tables:
        raise TascError("tasc-spec+gen needs --bundle or --tables DIR holding <dataset>.npz from tasc-edge export")
    return NgramTable.load(Path(cfg.tables) / f"{name}.npz", backend.tokenizer_hash)


def drafter_c(entry: dict, drafter) -> float:
    """MBSU's c (drafter bytes per step / target bytes per step) from what the loaded drafter
    reads: a hidden head's step got cheaper after some bundles were exported (its token half
    folded into a table), and their manifests still record the old bytes."""
    head = getattr(drafter, "head", None)
    if head is None or not entry.get("target_step_bytes"):
        return entry["c"]
    return head.step_bytes() / entry["target_step_bytes"]


def ask_below_for(cfg: BenchConfig, dataset: str) -> float | None:
    if isinstance(cfg.chain_ask_below, dict):
        return cfg.chain_ask_below.get(dataset)
    return cfg.chain_ask_below


def task_table_of(drafter) -> NgramTable | None:
    ngram = getattr(drafter, "ngram", drafter)  # a chained drafter's n-gram part
    return getattr(ngram, "task", None)


def method_drafters(name: str, task, backend, cfg: BenchConfig, methods: list[str], bundle=None,
                    model_drafters: dict | None = None, curve: CostCurve | None = None) -> dict:
    """Method name -> a fresh drafter for one dataset (None for the plain loops)."""
    drafters: dict = {"plain": None, "plain-unpadded": None}
    loaded: list[NgramTable] = []

    def exported() -> NgramTable:  # read once per dataset, shared by every drafter using it
        if not loaded:
            loaded.append(exported_table(name, backend, cfg, bundle))
        return loaded[0]

    for m in methods:  # fresh per dataset (calibration starts over), sharing the loaded model
        if drafter_variant(m) is not None:
            model = model_drafters[m].fresh()
            drafters[m] = model if m.startswith("model:") else ChainedDrafter(
                make_drafter("tasc-spec", exported()), model, ask_below=ask_below_for(cfg, name), cost=curve)
    if "pld" in methods:
        drafters["pld"] = make_drafter("pld", None)
    if "tasc-spec" in methods:
        drafters["tasc-spec"] = make_drafter("tasc-spec", reference_table(backend, task))
    if "tasc-spec+gen" in methods:
        drafters["tasc-spec+gen"] = make_drafter("tasc-spec", exported())
    sweep = [m for m in methods if method_gamma(m) is not None]
    if sweep:  # the sweep uses the best table at hand: the exported one, else the reference one
        # (tables are read-only: every drafter shares the one loaded copy)
        if "tasc-spec+gen" in drafters or cfg.tables or bundle:
            table = exported()
        elif "tasc-spec" in drafters:
            table = drafters["tasc-spec"].task
        else:
            table = reference_table(backend, task)
        for m in sweep:
            drafters[m] = make_drafter("tasc-spec", table, NgramDraftConfig(min_survival=0.0))
    return drafters


def run_method(m: str, dataset: str, row, prompt: list[int], backend: LlamaCppBackend,
               drafters: dict, peers: dict, gen_cfg: GenerateConfig, curve, cfg: BenchConfig) -> RowRun:
    """Method `m` on one row, cold, timed: what it generated, how fast, and its time split."""
    # Every run starts cold (no cached prompt): the methods of one row run back to back on one
    # cache, and reusing the prompt another method just evaluated would flatter whoever runs
    # second - a request on a device arrives with a prompt nobody has evaluated yet.
    if is_peer(m):
        peers[m].cold()
        try:
            tokens, secs, first = timed(peers[m], prompt, cfg.max_new_tokens, backend.stop_tokens)
        except (ValueError, RuntimeError) as e:
            # a peer's own bug on one row (llama-cpp-python's prompt lookup overflowed its logits
            # buffer past 512 tokens until the peer set logits_all) is recorded and counted,
            # not allowed to end the whole bench
            return RowRun(dataset, row.id, m, [], 0.0, 0.0, 0.0, error=f"{type(e).__name__}: {e}")
        text = backend.detokenize(tokens)
        return RowRun(dataset, row.id, m, tokens, secs, exact_match(text, row.output),
                      chrf(text, row.output), first_s=first.seconds, first_n=first.tokens,
                      reused_tokens=getattr(peers[m], "reused_tokens", None) if cfg.prefix_cache_mb > 0 else None)
    backend.prefill([])
    # only a hidden-state drafter pays for hidden-state output: its begin() switches it on
    backend.keep_hidden = False
    cold = getattr(drafters.get(m), "cold", None)
    if cold is not None:  # a model drafter's cache too: model:K and chained:K share one backend
        cold()
    first = FirstForwardClock()

    def on_tokens(new: list[int]) -> bool:
        first(len(new))
        return False  # never stop the generation

    gamma, steps = method_gamma(m), None
    if m == "plain-unpadded":
        backend.min_rows = 1
        try:
            g = generate(backend, prompt, None, gen_cfg, None, on_tokens=on_tokens)
        finally:
            backend.min_rows = 2
    elif gamma is not None:  # fixed length: no cost curve, the drafter's own cut-off disabled
        g = generate(backend, prompt, drafters[m], replace(gen_cfg, max_draft=gamma), None,
                     on_tokens=on_tokens)
    else:
        steps = getattr(drafters[m], "steps", None)
        g = generate(backend, prompt, drafters[m], gen_cfg, curve, on_tokens=on_tokens)
    s, text = g.stats, backend.detokenize(g.tokens)
    draft_steps = None if gamma is not None or steps is None else drafters[m].steps - steps
    return RowRun(dataset, row.id, m, g.tokens, s.total_s, exact_match(text, row.output),
                  chrf(text, row.output), s.tau, s.drafted, s.accepted, s.target_forwards,
                  s.forward_tokens, s.prefill_s, s.draft_s, s.verify_s, s.other_s, draft_steps,
                  first.seconds, first.tokens,
                  reused_tokens=backend.reused_tokens if backend.prefix_cache is not None else None,
                  padded=s.padded, curve_cost=s.curve_cost or None)
