"""Two quantizations of one model side by side in one run: plain and n-gram tokens/s, quality.

The honest baseline is the fastest plain configuration on the machine, and for a model whose
vocabulary is large the head's quantization decides it: `q4_0` keeps the (tied) head at Q8_0,
`q4_0-pure` puts it in Q4_0 too. For each task this runs, row by row and interleaved (so a
burst of machine noise hits every configuration alike), plain greedy and tasc-spec+gen on each
quantization, with the bundle's n-gram table (same tokenizer, so it serves both), and prints
tokens/s, the median per-row time ratio to the first quantization's plain loop, how many
outputs equal the first quantization's, and chrF against the references.

    python scripts/plain_quants.py /work/run/gemma-q4 --quants q4_0,q4_0-pure --rows 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tasc_edge.cost import measure_cost_curve
from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.metrics import chrf
from tasc_edge.runtime.bundle import load_bundle, load_table
from tasc_edge.runtime.llama_backend import LlamaCppBackend
from tasc_edge.runtime.models import resolve_model
from tasc_edge.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="a GGUF bundle: its source model is requantized, its tables drafted from")
    ap.add_argument("--model", default="gemma3-270m", help="the model the bundle was exported from")
    ap.add_argument("--quants", default="q4_0,q4_0-pure")
    ap.add_argument("--datasets", default="e2e_nlg,snips_slots,text2sql,bfcl")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    quants = args.quants.split(",")
    backends = {q: LlamaCppBackend(resolve_model(args.model, q), n_ctx=4096) for q in quants}
    curves = {q: measure_cost_curve(b, max_k=16) for q, b in backends.items()}
    for q, c in curves.items():
        print(f"{q}: t(1) {c.step_seconds * 1e3:.1f} ms, t(k)/t(1) " + " ".join(f"{r:.2f}" for r in c.ratios[:8]))
    first = backends[quants[0]]
    methods = [(q, m) for q in quants for m in ("plain", "tasc-spec+gen")]
    for name in args.datasets.split(","):
        task = load_task(Path(args.data_root) / name)
        table = load_table(bundle, name, first.tokenizer_hash)
        rows = [r for r in task.test if len(first.chat_prompt(r.prompt)) + args.max_new_tokens <= first.n_ctx][: args.rows]
        secs: dict = {m: [] for m in methods}
        toks: dict = {m: 0 for m in methods}
        outs: dict = {m: [] for m in methods}
        for i, row in enumerate(rows):
            for q, m in methods[i % len(methods):] + methods[: i % len(methods)]:  # rotate the order
                b = backends[q]
                drafter = None if m == "plain" else make_drafter("tasc-spec", table)  # the "+gen" table
                cfg = GenerateConfig(args.max_new_tokens, stop_tokens=b.stop_tokens)
                b.prefill([])  # cold, as in bench: a prompt this backend just evaluated would be free
                t = time.perf_counter()
                g = generate(b, b.chat_prompt(row.prompt), drafter, cfg, cost=curves[q])
                secs[(q, m)].append(time.perf_counter() - t)
                toks[(q, m)] += len(g.tokens)
                outs[(q, m)].append(g.tokens)
        base = (quants[0], "plain")
        print(f"{name} ({len(rows)} rows)")
        for q, m in methods:
            ratio = statistics.median(a / b for a, b in zip(secs[base], secs[(q, m)]))
            same = sum(a == b for a, b in zip(outs[(q, "plain")], outs[base]))
            quality = statistics.mean(chrf(backends[q].detokenize(o), r.output) for o, r in zip(outs[(q, m)], rows))
            print(f"  {q:>10} {m:<14} {toks[(q, m)] / sum(secs[(q, m)]):6.1f} tok/s  "
                  f"{ratio:.2f}x vs {quants[0]} plain  plain output = {quants[0]}'s on {same}/{len(rows)}  "
                  f"chrF {quality:.1f}  spec = own plain on "
                  f"{sum(a == b for a, b in zip(outs[(q, m)], outs[(q, 'plain')]))}/{len(rows)}")
    for b in backends.values():
        b.close()


if __name__ == "__main__":
    main()
