"""Replay a chained drafter's choices: what would the other candidate drafts have got?

Greedy output is fixed (it equals plain greedy, which the bench checks on every row), so once
a row is generated the accepted length of *any* draft sent at any step is known. This runs
`ChainedDrafter` (n-grams + a hidden head) on a bundle's test rows and, at every target
forward, also asks for the drafts it could have sent instead:

  ngrams   the n-gram draft alone (what tasc-spec+gen sends there)
  chain    the head's argmax chain, the n-grams continuing after it
  one      the head's first token, the n-grams continuing after it
  chosen   what chained actually sent

Each is cut by the loop's own rule (best_draft_length on the measured verify curve) and
scored as committed tokens per t(1) of verify time; `oracle` takes the best candidate at every
step (a perfect chooser). A second part re-decides every step with "look at the head only
where the n-grams' first token is below T, send its chain when its rate beats theirs" for
several T, charging each head step (--head-step-ms; 0.8 is chained's default, so that line
should sit near `chosen` less the head's cost).
Scores are local (each step is scored on the path chained took), so they bound what a choice
rule could change, they are not a bench. Candidates are computed from the drafters' state
before chained drafts and their bookkeeping is put back, so the run itself is unchanged.

    python scripts/chain_replay.py BUNDLE head-k1024-d3 --datasets text2sql,bfcl --skip 50 --rows 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasc_edge.cost import CostCurve, best_draft_length, best_rate, measure_cost_curve
from tasc_edge.decode import Draft, GenerateConfig, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.files import atomic_write_text
from tasc_edge.model_drafter import ChainedDrafter
from tasc_edge.runtime.bundle import load_table, open_drafter, open_target
from tasc_edge.tasks import load_task


class ReplayedChain(ChainedDrafter):
    """ChainedDrafter that records, before each draft, the candidates it chooses between."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps_log: list[dict] = []  # one per target forward: position, candidates
        self.output: list[int] = []
        self._prompt = 0

    def begin(self, prompt) -> None:
        super().begin(prompt)
        self.steps_log, self.output, self._prompt = [], [], len(prompt)

    def draft(self, max_tokens: int) -> Draft:
        ng, head = self.ngram, self.model
        saved = list(ng._buckets)  # the n-grams' bookkeeping for update(): put back below
        cands = {"ngrams": ng.draft(max_tokens)}
        chain = head.peek_chain(max_tokens)  # cached per state: chained reuses it
        if chain.tokens:
            rest = ng.draft(max_tokens - len(chain.tokens), after=chain.tokens)
            cands["chain"] = Draft(chain.tokens + rest.tokens, chain.confidence + rest.confidence)
            rest = ng.draft(max_tokens - 1, after=chain.tokens[:1])
            cands["one"] = Draft(chain.tokens[:1] + rest.tokens, chain.confidence[:1] + rest.confidence)
        ng._buckets = saved
        cands["chosen"] = super().draft(max_tokens)
        self.steps_log.append({"pos": len(ng.context.tokens) - self._prompt, "cands": cands,
                               "head_part": len(chain.tokens)})
        return cands["chosen"]

    def update(self, draft: Draft, n_accepted: int, committed) -> None:
        self.output.extend(int(t) for t in committed)
        super().update(draft, n_accepted, committed)


def score(draft: Draft, truth: list[int], curve: CostCurve) -> tuple[int, float]:
    """(tokens committed, verify time in t(1)) if the loop had sent this draft here."""
    cut = best_draft_length(draft.confidence, curve)
    n = 0
    while n < cut and n < len(truth) and draft.tokens[n] == truth[n]:
        n += 1
    return n + 1, curve.cost(cut + 1)


def replay_tables(steps: list[tuple[dict, list[int]]], curve: CostCurve,
                  head_step: tuple[float, float]) -> list[str]:
    """head_step: (first, later) head step time in t(1)."""
    totals: dict[str, list[float]] = {}
    best = [0.0, 0.0]
    for step, truth in steps:
        scored = {k: score(d, truth, curve) for k, d in step["cands"].items()}
        for k in ("chain", "one"):  # no head state (first step): the n-grams' draft
            scored.setdefault(k, scored["ngrams"])
        for k, (t, c) in scored.items():
            acc = totals.setdefault(k, [0.0, 0.0])
            acc[0] += t
            acc[1] += c
        t, c = max(scored.values(), key=lambda tc: tc[0] / tc[1])
        best[0] += t
        best[1] += c
    lines = [f"  {k:7} {t / c:.3f} tokens per t(1)" for k, (t, c) in totals.items()]
    lines.append(f"  oracle  {best[0] / best[1]:.3f} tokens per t(1)  ({len(steps)} forwards)")
    for below in (0.0, 0.5, 0.8, 0.9, 1.01):  # a rule re-decided here, on the recorded confidences
        tokens = cost = 0.0
        for step, truth in steps:
            c, n_head = step["cands"], step["head_part"]
            sent = a = c["ngrams"]
            if "chain" in c and (not a.tokens or a.confidence[0] < below):
                cost += head_step[0]  # the look: one cache-cold head step
                theirs = best_rate(a.confidence, curve)
                # chained's bound: a chain of certain tokens after the first could not win either
                if best_rate(c["chain"].confidence[:1] + [1.0] * (n_head - 1), curve) > theirs:
                    cost += head_step[1] * (n_head - 1)
                    if not a.tokens or best_rate(c["chain"].confidence, curve) > theirs:
                        sent = c["chain"]
            t, v = score(sent, truth, curve)
            tokens += t
            cost += v
        lines.append(f"  look below {below:.2f}, choose by rate: {tokens / cost:.3f} tokens per t(1), head steps paid")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("variant", help="a hidden-head drafter of the bundle, e.g. head-k1024-d3")
    ap.add_argument("--datasets", default="text2sql,bfcl")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--skip", type=int, default=50, help="test rows to pass over (keep a report's rows apart)")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dump", help="write every step's candidates and the output to this JSON file")
    ap.add_argument("--head-step-ms", default="0.75,0.3",
                    help="a head step's time: the first after a target forward (weights cache-cold), later ones")
    args = ap.parse_args()

    backend, _, bundle = open_target(None, "q4_0", 4096, None, args.bundle)
    with backend:
        head = open_drafter(bundle, args.variant, backend)
        curve = measure_cost_curve(backend, max_k=16)
        print(f"t(1) {curve.step_seconds * 1e3:.1f} ms, t(k)/t(1) " + " ".join(f"{r:.2f}" for r in curve.ratios))
        cfg = GenerateConfig(args.max_new_tokens, stop_tokens=backend.stop_tokens)
        dump: dict[str, list] = {}
        for name in args.datasets.split(","):
            task = load_task(Path(args.data_root) / name)
            table = load_table(bundle, name, backend.tokenizer_hash)
            chained = ReplayedChain(make_drafter("tasc-spec", table), head.fresh(), cost=curve)
            steps = []
            rows = [r for r in task.test if len(backend.chat_prompt(r.prompt)) + args.max_new_tokens <= backend.n_ctx]
            for row in rows[args.skip : args.skip + args.rows]:
                chained.cold()
                generate(backend, backend.chat_prompt(row.prompt), chained, cfg, cost=curve)
                steps += [(s, chained.output[s["pos"]:]) for s in chained.steps_log]
            dump[name] = [{"truth": truth, "head_part": s["head_part"],
                           **{k: [d.tokens, d.confidence] for k, d in s["cands"].items()}} for s, truth in steps]
            print(f"{name}: rows {args.skip + 1}-{args.skip + args.rows}")
            ms = [float(x) / (curve.step_seconds * 1e3) for x in args.head_step_ms.split(",")]
            print("\n".join(replay_tables(steps, curve, (ms[0], ms[-1]))))
        if args.dump:
            atomic_write_text(Path(args.dump), json.dumps({"ratios": curve.ratios, "datasets": dump}))


if __name__ == "__main__":
    main()
