"""Plain greedy decoding speed per configuration (quantization x KV-cache type), side by side.

Speed-ups must be reported against the fastest *plain* configuration on the machine, not only
against the same configuration's plain loop. Run from a checkout with the runtime extra:
    python scripts/compare_plain_configs.py --task ../shared/datasets/e2e_nlg --rows 20
Configurations are interleaved per row so machine noise hits them alike.
"""

import argparse
import os
import statistics

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from tasc_edge.decode import GenerateConfig, generate  # noqa: E402
from tasc_edge.runtime.llama_backend import LlamaCppBackend  # noqa: E402
from tasc_edge.runtime.models import resolve_model  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="demo")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--configs", default="as-is:f16,as-is:q8_0,q4_0:f16,q4_0:q8_0,q4_0:f16/q8_0,q4_0:q8_0/f16,q8_0:q8_0")
    args = ap.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs.split(",")]
    backends = {c: LlamaCppBackend(resolve_model(None, c[0]), kv_type=c[1]) for c in configs}
    rows = load_task(args.task).test[: args.rows]
    tps: dict[tuple, list[float]] = {c: [] for c in configs}
    for i, row in enumerate(rows):
        order = configs[i % len(configs):] + configs[: i % len(configs)]
        for c in order:
            b = backends[c]
            g = generate(b, b.chat_prompt(row.prompt), None,
                         GenerateConfig(args.max_new_tokens, stop_tokens=b.stop_tokens))
            tps[c].append(len(g.tokens) / g.stats.total_s)
    print("| quant | KV cache | plain tok/s (median over rows, prefill included) |\n|---|---|---|")
    for c in configs:
        print(f"| {c[0]} | {c[1]} | {statistics.median(tps[c]):.1f} |")


if __name__ == "__main__":
    main()
