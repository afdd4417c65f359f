"""What a bench measured and how it reads: the row record (RowRun), method names, and the
summary and markdown a report is made of. Pure functions over rows, no models (runtime/bench.py
runs the methods; runtime/report.py predicts devices and plots from the summary)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from tasc_edge.cost import CostCurve
from tasc_edge.runtime.peers import PEER_BASELINE, peer_quant

OUR_METHODS = ("plain", "pld", "tasc-spec", "tasc-spec+gen", "plain-unpadded")
PEER_METHODS = tuple(PEER_BASELINE)
BASELINE = {**{m: "plain" for m in OUR_METHODS}, "plain-unpadded": "plain-unpadded", **PEER_BASELINE}
PLAIN_METHODS = ("plain", "plain-unpadded", "llama-plain", "hf-plain")


def is_plain(method: str) -> bool:
    """A plain (no drafting) configuration: its own baseline and a fastest-plain candidate."""
    return method in PLAIN_METHODS or peer_quant(method) is not None


def sweep_method(gamma: int) -> str:
    return f"tasc-spec@{gamma}"


def method_gamma(method: str) -> int | None:
    """G for a fixed-gamma sweep method `tasc-spec@G`, None for every other method."""
    return int(method.split("@", 1)[1]) if "@" in method else None


def drafter_variant(method: str) -> str | None:
    """VARIANT for `model:VARIANT` / `chained:VARIANT`, None for every other method."""
    kind, _, variant = method.partition(":")
    return variant if kind in ("model", "chained") and variant else None


def baseline_of(method: str) -> str:
    if method_gamma(method) is not None or drafter_variant(method) is not None:
        return "plain"
    if peer_quant(method) is not None:
        return method
    return BASELINE[method]


@dataclass
class RowRun:
    dataset: str
    row: str
    method: str
    tokens: list[int]
    total_s: float
    exact: float  # task metric against the reference output
    chrf: float
    # our decode loop only (None for peers, whose internals we do not instrument)
    tau: float | None = None
    drafted: int | None = None
    accepted: int | None = None
    target_forwards: int | None = None
    forward_tokens: int | None = None
    prefill_s: float | None = None
    draft_s: float | None = None
    verify_s: float | None = None
    other_s: float | None = None
    draft_steps: int | None = None  # model-drafter forwards (MBSU's gamma); None for n-grams
    # time until the first forward's tokens were committed (prompt evaluation included), and
    # how many it committed: splits every method, peers too, into prefill and decode phases
    first_s: float | None = None
    first_n: int | None = None
    error: str | None = None  # the method failed on this row (peers only); excluded from stats
    reused_tokens: int | None = None  # prompt tokens taken from the prefix cache
    padded: int | None = None  # filler rows verified where more rows cost less (decode.pad_draft)
    curve_cost: float | None = None  # its forwards in t(1) units by the run's cost curve


def rows_of(saved: list[dict]) -> list[RowRun]:
    """RowRuns back from a bench.json's "rows" (keys a newer RowRun dropped are ignored)."""
    fields = RowRun.__dataclass_fields__
    return [RowRun(**{k: v for k, v in r.items() if k in fields}) for r in saved]


def time_per_token(run: RowRun) -> float | None:
    """Seconds per token after the first forward (prompt evaluation and its tokens excluded)."""
    if run.first_s is None or run.first_n is None or len(run.tokens) <= run.first_n:
        return None
    return (run.total_s - run.first_s) / (len(run.tokens) - run.first_n)


def summarise(runs: list[RowRun], methods: list[str], curve: CostCurve | None = None,
              peak_mb: dict[str, float] | None = None, drafter_c: dict[str, float] | None = None) -> list[dict]:
    """One entry per dataset x method. MBSU = tau / (gamma * c + 1) with c = 0 for n-gram
    drafters (no draft model is read), so MBSU = tau: the speed-up a perfectly memory-bound
    target would give. `speedup_predicted` replaces the flat curve by the measured t(k)/t(1).
    Memory: `peak_rss_mb` is the process's peak while the method ran (one process holds every
    method's model), `rss_delta_mb` that minus the peak while its baseline ran: what the
    drafter itself adds (tables, context index); peers' models are loaded up front and show
    in the report's `memory_mb` load phases instead."""
    peak_mb, drafter_c = peak_mb or {}, drafter_c or {}
    failed = [r for r in runs if r.error]
    by = {(r.dataset, r.row, r.method): r for r in runs if not r.error}
    results = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        rows = list(dict.fromkeys(r.row for r in runs if r.dataset == dataset))
        plains = [b for b in dict.fromkeys(r.method for r in runs)
                  if is_plain(b) and all((dataset, row, b) in by for row in rows)] or ["plain"]
        for m in methods:
            base = baseline_of(m)
            pairs = [(by[(dataset, row, m)], by[(dataset, row, base)]) for row in rows
                     if (dataset, row, m) in by and (dataset, row, base) in by]
            if not pairs:
                continue
            mine = [r for r, _ in pairs]
            fastest = min(plains, key=lambda b: sum(by[(dataset, row, b)].total_s for row in rows))
            ratios = [p.total_s / r.total_s for r, p in pairs]
            vs_fastest = [by[(dataset, r.row, fastest)].total_s / r.total_s for r in mine]
            ours = mine[0].tau is not None
            drafted = sum(r.drafted or 0 for r in mine)
            accepted = sum(r.accepted or 0 for r in mine)
            forwards = sum(r.target_forwards or 0 for r in mine)
            tau = sum(len(r.tokens) for r in mine) / forwards if ours and forwards else None
            steps = sum(r.draft_steps or 0 for r in mine)
            # MBSU = tau / (gamma * c + 1), gamma = drafter steps per target forward
            mbsu = (sum(len(r.tokens) for r in mine) / (forwards + drafter_c.get(m, 0.0) * steps)
                    if ours and forwards else None)
            q1, q3 = np.percentile(ratios, [25, 75])
            decode = [tp / tm for r, p in pairs
                      if (tm := time_per_token(r)) and (tp := time_per_token(p))]
            entry = {
                "dataset": dataset, "method": m, "baseline": base, "rows": len(pairs),
                "failed_rows": sum(1 for r in failed if r.dataset == dataset and r.method == m),
                "identical_rows": sum(r.tokens == p.tokens for r, p in pairs),
                # same tokens as *our* plain loop: is the cross-backend comparison like for like?
                "same_as_plain_rows": sum(r.tokens == by[(dataset, r.row, "plain")].tokens
                                          for r in mine if (dataset, r.row, "plain") in by),
                "speedup_median": statistics.median(ratios), "speedup_iqr": [float(q1), float(q3)],
                "fastest_plain": fastest, "speedup_vs_fastest_plain": statistics.median(vs_fastest),
                # after the first forward: what a drafter can change (prefill is the same work)
                "decode_speedup_median": statistics.median(decode) if decode else None,
                "ttft_ms_median": (statistics.median(r.first_s for r in mine) * 1e3
                                   if all(r.first_s is not None for r in mine) else None),
                "tokens_per_s": sum(len(r.tokens) for r in mine) / sum(r.total_s for r in mine),
                "mean_tokens": statistics.fmean(len(r.tokens) for r in mine),
                "exact_match": statistics.fmean(r.exact for r in mine),
                "chrf": statistics.fmean(r.chrf for r in mine),
                "tau_mean": tau, "mbsu": mbsu, "c": drafter_c.get(m, 0.0),
                "draft_steps_per_forward": steps / forwards if ours and forwards else None,
                "filler_rows_per_forward": (sum(r.padded or 0 for r in mine) / forwards
                                            if ours and forwards else None),
                "acceptance": accepted / drafted if drafted else None,
                "mean_accepted_length": None, "drafted_wasted": None, "time_split": None,
                "speedup_predicted": None, "gamma": method_gamma(m),
                "peak_rss_mb": peak_mb.get(m),
                "prompt_tokens_reused_mean": (statistics.fmean(r.reused_tokens for r in mine)
                                              if all(r.reused_tokens is not None for r in mine) else None),
                "rss_delta_mb": (peak_mb[m] - peak_mb[base]) if m in peak_mb and base in peak_mb else None,
            }
            unpadded = [(r, by[(dataset, r.row, "plain-unpadded")]) for r in mine
                        if (dataset, r.row, "plain-unpadded") in by]
            if ours and unpadded and m not in PLAIN_METHODS:
                # the ONNX plain loop without the pad row: faster, not bit-exact (its outputs
                # differ on some rows), the yardstick a speed-up must also beat
                entry["speedup_vs_unpadded_median"] = statistics.median(u.total_s / r.total_s
                                                                        for r, u in unpadded)
                dec = [tu / tm for r, u in unpadded if (tm := time_per_token(r)) and (tu := time_per_token(u))]
                entry["decode_speedup_vs_unpadded_median"] = statistics.median(dec) if dec else None
                entry["same_as_unpadded_rows"] = sum(r.tokens == u.tokens for r, u in unpadded)
            if ours:
                drafting = sum(1 for r in mine if r.drafted)  # rows that drafted at all
                entry["mean_accepted_length"] = accepted / max(1, forwards)
                entry["drafted_wasted"] = drafted - accepted
                entry["time_split"] = {k: sum(getattr(r, k) for r in mine) / sum(r.total_s for r in mine)
                                       for k in ("prefill_s", "draft_s", "verify_s", "other_s")}
                if all(r.curve_cost for r in mine):  # each forward priced by the curve
                    entry["speedup_predicted"] = sum(len(r.tokens) for r in mine) / sum(r.curve_cost for r in mine)
                elif curve is not None and forwards:  # a report from before rows carried it:
                    # the curve at the mean rows per forward, which a sawtooth curve misprices
                    mean_k = sum(r.forward_tokens for r in mine) / forwards
                    lo = int(mean_k)
                    c = curve.cost(lo) + (mean_k - lo) * (curve.cost(lo + 1) - curve.cost(lo))
                    entry["speedup_predicted"] = tau / c
                entry["rows_drafting"] = drafting
            results.append(entry)
    return results


def markdown(report: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    curve = report.get("cost_curve", {})
    lines = [f"# tasc-edge bench: {report['model']}", "",
             f"Verify cost on this machine: t(1) = {curve.get('step_ms', 0):.1f} ms; t(k)/t(1) for "
             "k = 1.. = " + " ".join(f"{r:.2f}" for r in curve.get("ratios", [])), "",
             (f"Prompt-prefix cache: {report['prefix_cache']['mb']:g} MB of earlier rows' prompts "
              "(each request meets the cache the earlier rows left; `prompt reused` = mean prompt "
              "tokens restored from it)." if report.get("prefix_cache") else
              "Every request cold: no prompt-prefix cache."), "",
             "| dataset | method | rows | identical | speed-up vs own plain, median [IQR] | "
             "vs fastest plain | decode phase vs own plain | TTFT ms | tau | MBSU | predicted from t(k) | acceptance | tok/s | exact | chrF | "
             "peak RSS MB (+ over baseline) | prompt reused |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['rows']} | {r['identical_rows']}/{r['rows']} | "
            f"{r['speedup_median']:.2f}x [{r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f}] | "
            f"{r['speedup_vs_fastest_plain']:.2f}x ({r['fastest_plain']}) | "
            f"{f(r.get('decode_speedup_median'), '.2f')}x | {f(r.get('ttft_ms_median'), '.0f')} | {f(r['tau_mean'], '.2f')} | {f(r['mbsu'], '.2f')} | "
            f"{f(r['speedup_predicted'], '.2f')} | {f(r['acceptance'], '.2f')} | {r['tokens_per_s']:.1f} | "
            f"{r['exact_match']:.2f} | {r['chrf']:.1f} | {f(r.get('peak_rss_mb'), '.0f')} "
            f"({f(r.get('rss_delta_mb'), '+.1f')}) | {f(r.get('prompt_tokens_reused_mean'), '.0f')} |")
    vs_unpadded = [r for r in report["results"] if r.get("speedup_vs_unpadded_median") is not None]
    if vs_unpadded:
        lines += ["", "Against the unpadded plain ONNX loop (faster than the exact padded one, not "
                  "bit-exact: `same` counts rows whose output it shares):", "",
                  "| dataset | method | speed-up, median | decode phase | same |", "|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['method']} | {r['speedup_vs_unpadded_median']:.2f}x | "
                  f"{f(r['decode_speedup_vs_unpadded_median'], '.2f')}x | {r['same_as_unpadded_rows']}/{r['rows']} |"
                  for r in vs_unpadded]
    if report.get("partial"):
        lines += ["", "**Partial**: a checkpoint written after each dataset; the run did not finish."]
    if segs := report.get("resumed", {}).get("segments"):
        lines += ["", f"**Resumed** (`--resume`): rows measured in {len(segs) + 1} runs on this machine, "
                  "each row's methods side by side in one of them (earlier: " + ", ".join(
                      f"{s['started']} - {s['ended']}" for s in segs) + ")."]
    if report.get("interrupted"):
        lines += ["", "**Interrupted**: only the rows that finished are counted."]
    return "\n".join(lines) + "\n"
