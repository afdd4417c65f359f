"""When should a chained drafter ask its model? Offline A/B of ChainedDrafter policies.

Runs the same test rows through the bundle's n-grams alone and chained with the model drafter
under several `ask_below` thresholds, greedy, with a *fixed* verify-cost curve (the bundle
target's, measured once at start), so tau and drafter steps do not depend on machine load.
Prints tau, drafter steps per target forward, and a modelled time per row from the curve and
the measured time of one drafter step; outputs are checked identical to the n-gram run.

    python scripts/chain_policy.py BUNDLE VARIANT --datasets e2e_nlg,snips_slots --rows 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tasc_edge.cost import measure_cost_curve
from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import NgramDrafter
from tasc_edge.model_drafter import ChainedDrafter, ModelDrafter
from tasc_edge.runtime.bundle import load_bundle, load_table, open_backend, open_drafter
from tasc_edge.tasks import load_task


def drafter_step_seconds(model: ModelDrafter, prompt: list[int], n: int = 32) -> float:
    model.begin(prompt)
    model.draft(1)  # prefill out of the way
    t = time.perf_counter()
    for _ in range(n):
        model.draft(2)  # one sync forward of the last token + one drafting forward
    return (time.perf_counter() - t) / (2 * n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("variant")
    ap.add_argument("--datasets", default="e2e_nlg,snips_slots,text2sql,bfcl")
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--thresholds", default="0.3,0.5,0.7")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    policies = [None, *(float(x) for x in args.thresholds.split(","))]
    with open_backend(bundle, n_ctx=4096) as target:
        curve = measure_cost_curve(target, max_k=13)
        base = open_drafter(bundle, args.variant, target)
        cfg = GenerateConfig(max_new_tokens=128, stop_tokens=target.stop_tokens)
        print(f"t(1) {curve.step_seconds * 1e3:.1f} ms; t(k)/t(1) "
              + " ".join(f"{r:.2f}" for r in curve.ratios))
        for name in args.datasets.split(","):
            task = load_task(str(Path(args.data_root) / name))
            table = load_table(bundle, name, target.tokenizer_hash)
            prompts = [target.chat_prompt(r.prompt) for r in task.test[: args.rows]]
            t_step = drafter_step_seconds(base, prompts[0])
            ngram = NgramDrafter(table)
            runs = {"ngram": [generate(target, p, ngram, cfg, curve) for p in prompts]}
            for th in policies:
                model = ModelDrafter(base.backend, base.n_vocab, base.kept, config=base.cfg)
                chained = ChainedDrafter(NgramDrafter(table), model, ask_below=th)
                runs[f"chained ask<{th}"] = out = []
                for p in prompts:
                    before = model.steps
                    g = generate(target, p, chained, cfg, curve)
                    g.stats.draft_steps = model.steps - before
                    out.append(g)
            ref = [g.tokens for g in runs["ngram"]]

            def modelled(g) -> float:  # verify forwards at their measured relative cost + drafter steps
                per_fw = g.stats.forward_tokens / g.stats.target_forwards
                return (g.stats.target_forwards * curve.cost(round(per_fw)) * curve.step_seconds
                        + getattr(g.stats, "draft_steps", 0) * t_step)

            base_t = [modelled(g) for g in runs["ngram"]]
            print(f"\n{name}: {len(prompts)} rows, one drafter step {t_step * 1e3:.2f} ms")
            for label, gens in runs.items():
                same = sum(g.tokens == r for g, r in zip(gens, ref))
                tau = sum(g.stats.generated for g in gens) / sum(g.stats.target_forwards for g in gens)
                steps = sum(getattr(g.stats, "draft_steps", 0) for g in gens) / sum(g.stats.target_forwards for g in gens)
                ratio = statistics.median(b / modelled(g) for b, g in zip(base_t, gens))
                print(f"  {label:18s} identical {same}/{len(gens)}  tau {tau:.3f}  drafter steps/forward "
                      f"{steps:.2f}  modelled speed vs n-grams {ratio:.3f}x")


if __name__ == "__main__":
    main()
