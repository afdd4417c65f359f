"""t(k)/t(1) and plain decode speed of an ONNX bundle's model with onnxruntime's spinning
workers off (the runtime default) and on, interleaved; run it on a quiet machine.

    python scripts/onnx_spinning.py BUNDLE/model.onnx ../shared/datasets
"""
import json
import statistics
import sys

from tasc_edge.cost import measure_cost_curve
from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.runtime.onnx_backend import OnnxBackend

B = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else "../shared/datasets"
rows = [json.loads(line) for line in open(f"{data}/snips_slots/test.jsonl")][:6]
backends = {s: OnnxBackend(B, n_threads=2, spinning=s) for s in (False, True)}
for s, b in backends.items():
    c = measure_cost_curve(b, max_k=8)
    print(f"spinning={s}: t(1) {c.step_seconds*1e3:.1f} ms, ratios " + " ".join(f"{r:.2f}" for r in c.ratios))
times = {s: [] for s in backends}
for r in rows:
    for s, b in backends.items():
        p = b.chat_prompt(r["prompt"])
        b.prefill([])
        g = generate(b, p, None, GenerateConfig(64, stop_tokens=b.stop_tokens))
        times[s].append(g.stats.decode_s / max(1, len(g.tokens) - 1))
for s in backends:
    print(f"spinning={s}: decode ms/token median {statistics.median(times[s])*1e3:.1f}")
