"""Per-token step time of the llama.cpp drafters (full head vs trimmed) next to the target."""
import json, statistics, sys, time
from tasc_edge.runtime.bundle import load_bundle, open_backend, open_drafter
from tasc_edge.tasks import load_task

bundle = load_bundle(sys.argv[1])
task = load_task(sys.argv[2])
out = {}
with open_backend(bundle, n_ctx=4096, n_threads=2) as target:
    prompt = target.chat_prompt(task.test[0].prompt)
    runs = {"target": target}
    drafters = {v: open_drafter(bundle, v, target, n_threads=2) for v in bundle.manifest["drafters"]}
    runs.update({f"drafter:{v}": d.backend for v, d in drafters.items()})
    for rnd in range(3):  # rounds, interleaved, so noise hits all alike
        for name, b in runs.items():
            b.prefill(prompt)
            ts = []
            for i in range(64):
                t = time.perf_counter()
                b.forward([prompt[i % len(prompt)]])
                ts.append(time.perf_counter() - t)
            out.setdefault(name, []).extend(ts)
    res = {}
    for name, ts in out.items():
        v = name.split(":", 1)[1] if ":" in name else None
        m = bundle.manifest["drafters"].get(v, {}) if v else {}
        res[name] = {"ms_median": statistics.median(ts) * 1e3, "c": m.get("c"), "k": m.get("k"),
                     "step_bytes": m.get("step_bytes")}
        print(f"{name:16s} {res[name]['ms_median']:.3f} ms/token  c={m.get('c')}  K={m.get('k')}")
    print(json.dumps(res, indent=1))
