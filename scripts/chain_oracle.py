"""How much could *any* chaining policy gain over the n-grams alone? Oracle bounds, and the
gates tried against them.

Greedy output is fixed (plain greedy), so the accepted length of any draft is known in
advance. Along each test row's plain output this script asks, at every target forward, the
bundle's n-gram drafter and its model drafter for drafts (each cut by the loop's cost-curve
rule) and walks each policy separately:

  ngrams             the n-gram draft, always (tasc-spec)
  chained            the model drafts where the n-grams have nothing (the session-12 default)
  gap1               there: the model's one token, then the n-grams after it; the model on
                     only if they still have nothing (ChainedDrafter's default since session 13)
  check<P            where the n-grams' first token is below P, look at the model's first
                     token (one forward); on disagreement the part whose first token has been
                     right more often in that case drafts (the model then drafts on)
  check<P+ng         the same, but after the model's token the n-grams continue
  gap1+check<P+ng    both: ChainedDrafter(ask_below=P) since session 13
  check-all          one drafter forward over the whole n-gram draft re-calibrates every
                     position; the model's token replaces the first rejected-looking one
  oracle-pick        whichever of the two drafts gets more tokens accepted; the model's steps
                     paid only where it is picked (a perfect gate)
  oracle-extend      the n-gram draft cut at its first rejection, continued by the model;
                     its steps paid only where that gains

Time is modelled with the bundle target's measured verify-cost curve and the drafter's own
measured cost curve (a look feeds every token committed since the last one), so the numbers
do not move with machine load; they leave out the drafter's prompt prefill and Python
overhead, which is why the real bench gains less than modelled.

    python scripts/chain_oracle.py BUNDLE VARIANT --datasets e2e_nlg,snips_slots --rows 20
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tasc_edge.cost import CostCurve, best_draft_length, measure_cost_curve
import numpy as np

from tasc_edge.decode import Draft, GenerateConfig, common_prefix_length, generate
from tasc_edge.drafters import AcceptanceCalibrator, NgramDrafter
from tasc_edge.model_drafter import ModelDrafter
from tasc_edge.runtime.bundle import load_bundle, load_table, open_backend, open_drafter
from tasc_edge.tasks import load_task

POLICIES = ("ngrams", "chained", "check<0.5", "check<0.8", "check<1.1", "check<0.5+ng", "check<0.8+ng",
            "gap1+check<0.5+ng", "gap1+check<0.8+ng", "check-all", "oracle-pick", "oracle-extend")


@dataclass
class Tally:
    forwards: int = 0
    tokens: int = 0
    verify_cost: float = 0.0  # in units of t(1)
    drafter_steps: int = 0
    drafter_cost: float = 0.0  # check policies: in units of the drafter's d(1), from its own curve

    def seconds(self, curve: CostCurve, t_step: float) -> float:
        return self.verify_cost * curve.step_seconds + (self.drafter_steps + self.drafter_cost) * t_step


def cut(d: Draft, curve: CostCurve) -> Draft:
    return d.truncate(best_draft_length(d.confidence, curve))


def model_draft(model: ModelDrafter, room: int, after: list[int] = ()) -> tuple[Draft, int]:
    before = model.steps
    d = model.draft(room, after=after)
    return d, model.steps - before


def score(model: ModelDrafter, draft: list[int]) -> tuple[np.ndarray, int]:
    """The model's distribution after committed[:-1] + each prefix of committed[-1:] + draft
    (len(draft) + 1 rows) from one forward, and how many tokens that forward fed."""
    seq = [*model.committed, *draft]
    keep = min(common_prefix_length(model.fed, seq), len(model.committed) - 1)
    if not model.fed or len(seq) - keep > 32 + len(draft):
        model.backend.prefill(seq[: len(model.committed) - 1])
        keep = len(model.committed) - 1
    elif keep < len(model.fed):
        model.backend.rollback(len(model.fed) - keep)
    missing = seq[keep:]
    rows = np.asarray(model.backend.forward(missing), dtype=np.float64)[-(len(draft) + 1):]
    model.fed = seq
    rows = np.exp(rows - rows.max(axis=1, keepdims=True))
    return rows / rows.sum(axis=1, keepdims=True), len(missing)


def simulate(prompt: list[int], truth: list[int], ngram: NgramDrafter, model: ModelDrafter,
             curve: CostCurve, dcurve: CostCurve, max_draft: int, policies: list[str]) -> dict[str, Tally]:
    """Walk every policy along `truth` separately (each commits its own accepted lengths)."""
    res = {p: Tally() for p in policies}
    cal = AcceptanceCalibrator(4.0)
    for policy in policies:
        tally = res[policy]
        ngram.begin(prompt)
        model.begin(prompt)
        pos = 0
        while pos < len(truth):
            room = min(max_draft, len(truth) - pos - 1)
            rest = truth[pos:]
            raw = ngram.draft(room)  # what a chained drafter sees, before the loop's cut
            a = cut(raw, curve)
            na = common_prefix_length(a.tokens, rest)
            chosen, n_acc, steps = a.tokens, na, 0
            judged = (Draft(), 0)  # the model's own draft and how much of it held
            if policy != "ngrams" and room > 0:
                if policy.startswith("gap1") and not raw.tokens:
                    # the n-grams have nothing: the model's one token, the n-grams after it,
                    # and the model on only if they still have nothing
                    b, steps = model_draft(model, 1)
                    saved = list(ngram._buckets)
                    more = ngram.draft(room - 1, after=b.tokens)
                    ngram._buckets = saved
                    if not more.tokens and room > 1:
                        more, s = model_draft(model, room - 1, after=b.tokens)
                        steps += s
                    c = cut(Draft(b.tokens + more.tokens, b.confidence + more.confidence), curve)
                    chosen = c.tokens
                    n_acc = common_prefix_length(chosen, rest)
                elif (policy == "chained" or "check<" in policy) and not raw.tokens:
                    b, steps = model_draft(model, room)
                    b = cut(b, curve)
                    chosen, n_acc = b.tokens, common_prefix_length(b.tokens, rest)
                    judged = (b, n_acc)
                elif "check<" in policy:
                    # below P, look at the model's first token (one forward over the tokens
                    # committed since it last looked); where it disagrees with the n-grams,
                    # the better-calibrated of the two drafts goes on
                    if raw.confidence[0] < float(policy.split("check<")[1].split("+")[0]):
                        probs, fed = score(model, [])
                        tally.drafter_cost += dcurve.cost(fed)
                        mine = int(np.argmax(probs[0]))
                        tok = model.kept.to_target(mine) if model.kept is not None else mine
                        agree = tok == raw.tokens[0]
                        ka = ("ng", agree, min(int(raw.confidence[0] * 10), 9))
                        kb = ("m", agree, min(int(probs[0][mine] * 10), 9))
                        pa = cal.estimate(ka, raw.confidence[0])
                        pb = cal.estimate(kb, float(probs[0][mine]))
                        cal.observe(ka, raw.tokens[0] == rest[0])
                        cal.observe(kb, tok == rest[0])
                        if not agree and pb > pa and policy.endswith("+ng"):
                            # the model's token, then the n-grams again (free) after it
                            saved = list(ngram._buckets)
                            b = ngram.draft(room - 1, after=[tok])
                            ngram._buckets = saved
                            c = cut(Draft([tok, *b.tokens], [pb, *b.confidence]), curve)
                            chosen = c.tokens
                            n_acc = common_prefix_length(chosen, rest)
                        elif not agree and pb > pa:
                            b, s = model_draft(model, room - 1, after=[tok])
                            c = cut(Draft([tok, *b.tokens], [pb, *b.confidence]), curve)
                            chosen, steps = c.tokens, s
                            n_acc = common_prefix_length(chosen, rest)
                            judged = (b, max(n_acc - 1, 0)) if n_acc >= 1 else (Draft(), 0)
                        else:
                            c = cut(Draft(raw.tokens, [pa, *raw.confidence[1:]]), curve)
                            chosen = c.tokens
                            n_acc = common_prefix_length(chosen, rest)
                elif policy == "check-all":
                    # one drafter forward over the n-gram draft: the model's view of every
                    # drafted position re-calibrates it; at the first disagreement the
                    # model's own token may take over (it is free: that row is computed)
                    probs, fed = score(model, raw.tokens)
                    tally.drafter_cost += dcurve.cost(fed)
                    toks, conf = [], []
                    for i, t in enumerate(raw.tokens):
                        mine = int(np.argmax(probs[i]))
                        local = model.kept.to_target(mine) if model.kept is not None else mine
                        agree = local == t
                        ka = ("ng", agree, min(int(raw.confidence[i] * 10), 9))
                        pa = cal.estimate(ka, raw.confidence[i])
                        kb = ("m", min(int(probs[i][mine] * 10), 9))
                        pb = cal.estimate(kb, float(probs[i][mine]))
                        if i <= na and i < len(rest):  # verification reveals truth up to here
                            cal.observe(ka, t == rest[i])
                            if not agree:
                                cal.observe(kb, local == rest[i])
                        if agree or pa >= pb:
                            toks.append(t)
                            conf.append(pa)
                            continue
                        toks.append(local)
                        conf.append(pb)
                        break
                    c = cut(Draft(toks, conf), curve)
                    chosen = c.tokens
                    n_acc = common_prefix_length(chosen, rest)
                elif policy == "oracle-pick":
                    b, s = model_draft(model, room)
                    b = cut(b, curve)
                    nb = common_prefix_length(b.tokens, rest)
                    judged = (b, nb)
                    if nb > na:
                        chosen, n_acc, steps = b.tokens, nb, s
                elif policy == "oracle-extend" and na < room:
                    head = a.tokens[:na]
                    b, s = model_draft(model, room - na, after=head)
                    conf = [1.0] * na + b.confidence
                    tail = Draft(head + b.tokens, conf).truncate(
                        max(na, best_draft_length(conf, curve)))
                    nb = common_prefix_length(tail.tokens, rest)
                    judged = (Draft(tail.tokens[na:], tail.confidence[na:]), nb - na)
                    if nb > na:
                        chosen, n_acc, steps = tail.tokens, nb, s
            # both drafters learn as they would from verifying their own drafts
            commit = rest[: n_acc + 1]
            ngram.update(raw, common_prefix_length(raw.tokens, rest), commit)
            model.update(*judged, commit)
            tally.forwards += 1
            tally.tokens += len(commit)
            tally.verify_cost += curve.cost(len(chosen) + 1)
            tally.drafter_steps += steps
            pos += len(commit)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("variant")
    ap.add_argument("--datasets", default="e2e_nlg,snips_slots,text2sql,bfcl")
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    policies = args.policies.split(",")
    with open_backend(bundle, n_ctx=4096) as target:
        curve = measure_cost_curve(target, max_k=13)
        model = open_drafter(bundle, args.variant, target)
        dcurve = measure_cost_curve(model.backend, max_k=24)
        cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, stop_tokens=target.stop_tokens)
        print(f"t(1) {curve.step_seconds * 1e3:.1f} ms; t(k)/t(1) " + " ".join(f"{r:.2f}" for r in curve.ratios))
        for name in args.datasets.split(","):
            table = load_table(bundle, name, target.tokenizer_hash)
            if table is None:
                print(f"{name}: no table in this bundle, skipped")
                continue
            task = load_task(str(Path(args.data_root) / name))
            prompts = [target.chat_prompt(r.prompt) for r in task.test[: args.rows]]
            t_step = dcurve.step_seconds
            ngram = NgramDrafter(table)
            total = {p: Tally() for p in policies}
            for p in prompts:
                truth = generate(target, p, None, cfg).tokens
                truth = truth + [next(iter(target.stop_tokens))] if len(truth) < cfg.max_new_tokens else truth
                for pol, t in simulate(p, truth, ngram, model, curve, dcurve, 12, policies).items():
                    agg = total[pol]
                    agg.forwards += t.forwards
                    agg.tokens += t.tokens
                    agg.verify_cost += t.verify_cost
                    agg.drafter_steps += t.drafter_steps
                    agg.drafter_cost += t.drafter_cost
            base = total["ngrams"].seconds(curve, t_step)
            print(f"\n{name}: {len(prompts)} rows, drafter step {t_step * 1e3:.2f} ms")
            for pol, t in total.items():
                print(f"  {pol:14s} tau {t.tokens / t.forwards:.3f}  drafter steps/forward "
                      f"{t.drafter_steps / t.forwards:.2f} (+{t.drafter_cost / t.forwards:.2f} d(1))  verify cost/forward {t.verify_cost / t.forwards:.2f}"
                      f"  modelled decode speed vs n-grams {base / t.seconds(curve, t_step):.3f}x")


if __name__ == "__main__":
    main()
