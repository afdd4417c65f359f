import json, sys
from collections import defaultdict
r = json.load(open(sys.argv[1]))
agg = defaultdict(lambda: defaultdict(float))
for run in r["rows"]:
    a = agg[(run["dataset"], run["method"])]
    for k in ("total_s","prefill_s","draft_s","verify_s","other_s","target_forwards","forward_tokens","drafted","accepted","draft_steps"):
        a[k] += run.get(k) or 0
    a["n"] += len(run["tokens"])
for (d, m), a in agg.items():
    f = max(a['target_forwards'], 1)
    print(f"{d:11s} {m:20s} tok {a['n']:.0f} fwd {a['target_forwards']:.0f} rows/fwd {a['forward_tokens']/f:.2f} verify {a['verify_s']:.2f}s ({a['verify_s']/f*1e3:.1f} ms/fwd) draft {a['draft_s']:.3f}s other {a['other_s']:.3f} prefill {a['prefill_s']:.2f} total {a['total_s']:.2f} acc {a['accepted']:.0f}/{a['drafted']:.0f} steps {a['draft_steps']:.0f}")
