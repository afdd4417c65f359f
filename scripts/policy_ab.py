"""The decode loop's draft-length policy against the one it replaced, side by side in one run.

Each drafting method runs four times per row, its n-gram part set up as:
  before            the measured curve forced monotone, the generic acceptance prior, no
                    optimism (the loop before session 23: never fills, never explores)
  fill              the curve as measured: drafts cut or filled to the cheapest row count
                    (cost.py, decode.pad_draft); generic prior, no optimism
  fill+explore      also optimistic estimates (drafters.AcceptanceCalibrator): what a table
                    without export calibration gets
  fill+calibration  the estimates start from the export's calibration (NgramTable.calibration),
                    no optimism: the defaults for an exported bundle's tables
  max-draft=N       with --max-draft N: fill+calibration, the loop allowed N drafts per forward
                    instead of GenerateConfig's default (decode.DEFAULT_MAX_DRAFT)
Rows run cold, methods rotated per row, with the bench's own drafters and run function. Prints,
per task and method, tokens/s, tau, filler rows per forward, outputs identical to plain, and
per-row time ratios of each variant over fill+calibration (> 1: the defaults are faster) with
a bootstrap 95% interval of the median.

    python scripts/policy_ab.py /work/run/gemma-q4 --methods tasc-spec+gen,chained:head-k1024-d3 --limit 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: as the CLI does, so BLAS does not fight llama.cpp's threads
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vocabtrim_table import paired  # noqa: E402

from tasc_edge.cost import CostCurve, measure_cost_curve  # noqa: E402
from tasc_edge.decode import GenerateConfig  # noqa: E402
from tasc_edge.drafters import NgramDrafter  # noqa: E402
from tasc_edge.files import atomic_write_text  # noqa: E402
from tasc_edge.runtime.bench import BenchConfig  # noqa: E402
from tasc_edge.runtime.bench_methods import method_drafters, run_method  # noqa: E402
from tasc_edge.runtime.bench_summary import drafter_variant  # noqa: E402
from tasc_edge.runtime.bundle import load_bundle, open_backend, open_drafter  # noqa: E402
from tasc_edge.runtime.run import check_exact_batching  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402


def monotone(curve: CostCurve) -> CostCurve:
    out: list[float] = []
    for r in curve.ratios:
        out.append(max(r, out[-1]) if out else r)
    return CostCurve(tuple(out), curve.step_seconds)


def set_ngram_estimates(drafters: dict, explore: float, calibrated: bool) -> dict:
    """The n-gram drafters (alone or a chained one's part) with or without the export's
    calibration, and with that much optimism."""
    for d in drafters.values():
        for part in (d, getattr(d, "ngram", None)):
            if isinstance(part, NgramDrafter):
                if not calibrated:
                    part.calibrator.seen.clear()  # seeded from the table when it was made
                part.calibrator.explore = explore
    return drafters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--methods", default="tasc-spec+gen")
    ap.add_argument("--datasets", default="e2e_nlg,snips_slots,text2sql,bfcl")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--out", default=None, help="write every row's runs here (JSON)")
    ap.add_argument("--max-draft", type=int, default=None, help="add a max-draft=N variant")
    ap.add_argument("--only", default=None, help="run just these variants (comma-separated; the default always runs)")
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    cfg = BenchConfig(datasets=args.datasets.split(","), data_root=args.data_root, bundle=args.bundle,
                      limit=args.limit)
    drafting = args.methods.split(",")
    backend = open_backend(bundle, n_ctx=cfg.n_ctx)
    check_exact_batching(backend, max(cfg.max_draft, args.max_draft or 0) + 1)
    measured = measure_cost_curve(backend, max_k=max(16, (args.max_draft or 0) + 1))
    # name: (curve, optimism, export calibration, drafts per forward at most)
    md = cfg.max_draft
    variants = {"before": (monotone(measured), 0.0, False, md), "fill": (measured, 0.0, False, md),
                "fill+explore": (measured, 1.0, False, md), "fill+calibration": (measured, 0.0, True, md)}
    default = "fill+calibration"
    if args.max_draft:
        variants[f"max-draft={args.max_draft}"] = (measured, 0.0, True, args.max_draft)
    if args.only:
        keep = {default, *args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}
    print(f"t(1) {measured.step_seconds * 1e3:.1f} ms; t(k)/t(1) " + " ".join(f"{r:.2f}" for r in measured.ratios))
    models = {m: open_drafter(bundle, v, backend, n_threads=backend.n_threads)
              for m in drafting if (v := drafter_variant(m))}
    gen_cfg = GenerateConfig(cfg.max_new_tokens, cfg.max_draft, stop_tokens=backend.stop_tokens)
    gen_cfgs = {pol: replace(gen_cfg, max_draft=v[3]) for pol, v in variants.items()}
    runs = []
    for name in cfg.datasets:
        task = load_task(Path(cfg.data_root) / name)
        drafters = {}
        for pol, (c, explore, calibrated, _) in variants.items():
            drafters[pol] = set_ngram_estimates(method_drafters(name, task, backend, cfg, drafting, bundle, models, c),
                                                explore, calibrated)
        rows = [r for r in task.test if len(backend.chat_prompt(r.prompt)) + cfg.max_new_tokens <= backend.n_ctx]
        rows = rows[args.skip: args.skip + args.limit]
        plan = [("plain", "plain")] + [(m, pol) for m in drafting for pol in variants]
        times: dict[str, dict] = {}
        got: dict[tuple[str, str], list] = {key: [] for key in plan}
        for i, row in enumerate(rows):
            prompt = backend.chat_prompt(row.prompt)
            for m, pol in plan[i % len(plan):] + plan[: i % len(plan)]:
                r = run_method(m, name, row, prompt, backend, drafters[pol if m != "plain" else default], {},
                             gen_cfgs.get(pol, gen_cfg), None if m == "plain" else variants[pol][0], cfg)
                got[(m, pol)].append(r)
                times.setdefault(row.id, {})[f"{m}/{pol}"] = r.total_s
                runs.append({"policy": pol, **asdict(r)})
        plain = {r.row: r.tokens for r in got[("plain", "plain")]}
        print(f"\n{name} ({len(rows)} rows): plain {sum(len(r.tokens) for r in got[('plain', 'plain')]) / sum(r.total_s for r in got[('plain', 'plain')]):.1f} tok/s")
        for m in drafting:
            for pol in variants:
                rs = got[(m, pol)]
                fw = sum(r.target_forwards for r in rs)
                print(f"  {m:<24} {pol:<16} {sum(len(r.tokens) for r in rs) / sum(r.total_s for r in rs):6.1f} tok/s  "
                      f"tau {sum(len(r.tokens) for r in rs) / fw:.2f}  filler/forward {sum(r.padded for r in rs) / fw:.2f}  "
                      f"= plain on {sum(r.tokens == plain[r.row] for r in rs)}/{len(rs)}")
            for pol in variants:
                if pol != default:
                    med, lo, hi, share = paired(times, f"{m}/{pol}", f"{m}/{default}")
                    print(f"  {m}: {pol} / {default} time {med:.3f} [{lo:.3f}-{hi:.3f}] ({default} "
                          f"faster on {share:.0%} of rows)")
            vs_plain = statistics.median(t["plain/plain"] / t[f"{m}/{default}"] for t in times.values())
            print(f"  {m}: {default} vs plain {vs_plain:.2f}x")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"cost_curve": list(measured.ratios), "step_ms": measured.step_seconds * 1e3,
                                                      "methods": drafting, "rows": runs}))
    for d in models.values():
        d.close()
    backend.close()


if __name__ == "__main__":
    main()
