"""`tasc-edge report`: device predictions and plots from a bench report (bench.json)."""

from __future__ import annotations

import json
from pathlib import Path

from tasc_edge.errors import TascError, require
from tasc_edge.predict import DeviceProfile, Prediction, predict, step_efficiency
from tasc_edge.runtime.bench_summary import is_plain


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "bench.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TascError(f"{path}: no bench report (run tasc-edge bench first)") from e
    except json.JSONDecodeError as e:
        raise TascError(f"{path}: not a valid bench report ({e.msg}, line {e.lineno})") from e
    if report.get("schema") != "tasc-edge.bench/1":
        raise TascError(f"{path}: schema {report.get('schema')!r}, this tasc-edge reads tasc-edge.bench/1")
    return report


def merge_reports(reports: list[dict]) -> dict:
    """Several bench runs as one report: per dataset, the last run that has it wins (so a run
    interrupted mid-dataset is overridden by the run that redid it). Each dataset's figures
    still come from one run, with every method side by side in it."""
    if len(reports) == 1:
        return reports[0]
    merged = {**reports[-1], "runs": [], "results": []}
    owner: dict[str, int] = {}
    for i, rep in enumerate(reports):
        for r in rep["results"]:
            owner[r["dataset"]] = i
    for i, rep in enumerate(reports):
        merged["runs"].append({"started": rep["started"], "cost_curve": rep["cost_curve"],
                               "datasets": [d for d, o in owner.items() if o == i],
                               "interrupted": rep.get("interrupted", False)})
        merged["results"] += [r for r in rep["results"] if owner[r["dataset"]] == i]
    merged.pop("interrupted", None)
    return merged


def prediction_markdown(profile: DeviceProfile, report: dict, preds: list[Prediction]) -> str:
    curve = report["cost_curve"]
    eff = step_efficiency(report["model_bytes"], curve["step_ms"] / 1e3, report["bandwidth_gbs"])
    lines = [
        f"# Predicted for {profile.name} (`{profile.key}`) from a bench on {report['machine']['platform']}",
        "",
        "**Measured** on the bench machine: copy bandwidth "
        f"{report['bandwidth_gbs']:.1f} GB/s, one decode step {curve['step_ms']:.2f} ms for "
        f"{report['model_bytes'] / 1e6:.0f} MB of weights = {eff:.0%} of that bandwidth; tau, "
        "acceptance and the t(k)/t(1) curve per dataset and method.",
        f"**Assumed** for the device: sustained bandwidth {profile.bandwidth_sustained_gbs} GB/s "
        f"({profile.bandwidth_source}), the same bandwidth efficiency, and the bench machine's "
        "t(k)/t(1) curve (a more memory-bound device has a flatter one: the MBSU column is that "
        f"ideal). Thermal: {profile.thermal}.",
        "",
        "| dataset | method | predicted plain tok/s | predicted speed-up | memory-bound ideal (MBSU) "
        "| predicted tok/s | recommended max draft |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in preds:
        lines.append(f"| {p.dataset} | {p.method} | {p.plain_tokens_per_s:.1f} | {p.speedup:.2f}x | "
                     f"{p.speedup_memory_bound:.2f}x | {p.tokens_per_s:.1f} | {p.recommended_max_draft} |")
    best = {}
    for p in preds:
        if p.dataset not in best or p.speedup > best[p.dataset].speedup:
            best[p.dataset] = p
    lines += ["", "Recommended drafter per dataset: " + ", ".join(
        f"{d}: **{p.method}** ({p.speedup:.2f}x)" for d, p in best.items())]
    return "\n".join(lines) + "\n"


def run_report(bench: str | Path | dict, device: str, out: str | Path | None, plots: bool) -> str:
    from tasc_edge.predict import load_profile

    report = bench if isinstance(bench, dict) else load_report(bench)
    profile = load_profile(device)
    text = prediction_markdown(profile, report, predict(profile, report))
    if out is not None:
        from tasc_edge.files import atomic_write_text

        out = Path(out)
        atomic_write_text(out / f"predicted-{profile.key}.md", text)
        if plots:
            write_plots(report, out)
    return text


def write_plots(report: dict, out: Path) -> list[Path]:
    """Speed-up per dataset and method; speed-up vs acceptance; verify cost curve; memory."""
    matplotlib = require("matplotlib", "report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    results = report["results"]
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    methods = [m for m in dict.fromkeys(r["method"] for r in results)
               if not is_plain(m) and "@" not in m]
    paths = []

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, d in enumerate(datasets):
            r = next((r for r in results if r["dataset"] == d and r["method"] == m), None)
            if r is not None:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(r["speedup_median"])
                lo.append(r["speedup_median"] - r["speedup_iqr"][0])
                hi.append(r["speedup_iqr"][1] - r["speedup_median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("wall-clock speed-up vs own plain (median, IQR)")
    ax.set_title(f"{report['model']}: speed-up per dataset and method")
    ax.legend(fontsize=8, ncol=3)
    paths.append(_save(fig, out / "speedup.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in methods:
        pts = [(r["acceptance"], r["speedup_median"], r["dataset"]) for r in results
               if r["method"] == m and r.get("acceptance") is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=m)
            for a, s, d in pts:
                ax.annotate(d, (a, s), fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("acceptance (accepted / drafted)")
    ax.set_ylabel("speed-up vs plain")
    ax.legend(fontsize=8)
    ax.set_title("speed-up vs acceptance")
    paths.append(_save(fig, out / "speedup_vs_acceptance.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ratios = report["cost_curve"]["ratios"]
    ks = np.arange(1, len(ratios) + 1)
    ax.plot(ks, ratios, marker="o", label="measured t(k)/t(1)")
    ax.plot(ks, np.ones_like(ks), linestyle="--", label="memory-bound ideal")
    ax.plot(ks, ks, linestyle=":", label="compute-bound (linear)")
    ax.set_xlabel("tokens per target forward (k)")
    ax.set_ylabel("t(k) / t(1)")
    ax.set_title(f"verify cost, t(1) = {report['cost_curve']['step_ms']:.1f} ms")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "cost_curve.png"))

    sweep = [r for r in results if r.get("gamma")]
    if sweep:
        fig, (ax_tau, ax_speed) = plt.subplots(1, 2, figsize=(11, 4.5))
        for i, d in enumerate(datasets):
            pts = sorted((r["gamma"], r["tau_mean"], r["speedup_median"]) for r in sweep if r["dataset"] == d)
            if not pts:
                continue
            color = f"C{i}"
            ax_tau.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=d)
            ax_speed.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", color=color, label=d)
            # the sweep drafts from the exported table when there is one: compare like with like
            adaptive = next((r for m in ("tasc-spec+gen", "tasc-spec") for r in results
                             if r["dataset"] == d and r["method"] == m), None)
            if adaptive is not None:
                ax_speed.axhline(adaptive["speedup_median"], color=color, linestyle="--", linewidth=0.8)
        ax_tau.set_xlabel("fixed draft length gamma")
        ax_tau.set_ylabel("tau (tokens per target forward) = MBSU")
        ax_tau.set_title("tau vs gamma (TASC-spec, fixed length)")
        ax_speed.axhline(1.0, color="black", linewidth=0.8)
        ax_speed.set_xlabel("fixed draft length gamma")
        ax_speed.set_ylabel("wall-clock speed-up vs plain (median)")
        ax_speed.set_title("fixed gamma (solid) vs adaptive length (dashed)")
        ax_tau.legend(fontsize=8)
        paths.append(_save(fig, out / "tau_vs_gamma.png"))

    peaks = {m: v for m, v in report.get("memory_mb", {}).get("peak_by_method", {}).items()
             if m not in (None, "null")}  # reports written before the sampler race was fixed
    if peaks:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(list(peaks), list(peaks.values()))
        ax.set_ylabel("peak RSS while the method ran (MB)")
        ax.set_title("memory (one process holds every method's model)")
        ax.tick_params(axis="x", labelrotation=30)
        paths.append(_save(fig, out / "memory.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_results(report: dict) -> str:
    """Results section for README.md, generated from a bench report (never typed by hand)."""
    results = [r for r in report["results"] if not r.get("gamma")]  # the sweep has its own plot
    methods = list(dict.fromkeys(r["method"] for r in results))
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    by = {(r["dataset"], r["method"]): r for r in results}
    curve = report["cost_curve"]
    cfg = report["config"]
    runs = report.get("runs") or [{"started": report["started"], "cost_curve": curve,
                                    "datasets": datasets}]
    lines = [
        f"Generated by `tasc-edge report --readme` from {len(runs)} `tasc-edge bench` run(s) on "
        f"{report['machine']['cpus']} CPUs ({report['machine']['platform']}): {report['model']}, "
        f"greedy, up to {cfg['max_new_tokens']} new tokens, the first {cfg['limit']} test rows of "
        "each dataset that fit the context, all methods interleaved row by row within a run.",
        "",
        *[f"- run {i + 1} ({r['started'][:16]}; {', '.join(r['datasets'])}): one target step "
          f"{r['cost_curve']['step_ms']:.1f} ms; t(k)/t(1) = "
          + ", ".join(f"{x:.2f}" for x in r["cost_curve"]["ratios"][:8]) + " for k = 1..8"
          for i, r in enumerate(runs)],
        "",
        "Median per-row wall-clock speed-up against the method's own plain baseline "
        "(our loop for ours, `Llama.generate` for llama-cpp-python's prompt lookup, `generate()` "
        "for transformers'), and in brackets against the fastest plain configuration in the run:",
        "",
        "| dataset | " + " | ".join(m for m in methods if not m.endswith("plain")) + " |",
        "|---|" + "---|" * len([m for m in methods if not m.endswith("plain")]),
    ]
    for d in datasets:
        cells = []
        for m in methods:
            if m.endswith("plain"):
                continue
            r = by.get((d, m))
            cells.append("-" if r is None else
                         f"{r['speedup_median']:.2f}x ({r['speedup_vs_fastest_plain']:.2f}x)")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    drafting = [m for m in methods if not m.endswith("plain")]
    if any(by.get((d, m), {}).get("decode_speedup_median") for d in datasets for m in drafting):
        lines += ["", "Decode phase only (time per token after the first forward, which evaluates "
                  "the prompt and is the same work with or without a drafter), median per row "
                  "against the method's own plain baseline:", "",
                  "| dataset | " + " | ".join(drafting) + " |", "|---|" + "---|" * len(drafting)]
        for d in datasets:
            cells = [f"{x:.2f}x" if (x := by.get((d, m), {}).get("decode_speedup_median")) else "-"
                     for m in drafting]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += ["", "| dataset | method | identical to own plain | tau (MBSU) | acceptance | tok/s | "
              "TTFT ms | exact match | chrF |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        tau = "-" if r["tau_mean"] is None else f"{r['tau_mean']:.2f}"
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        ttft = "-" if r.get("ttft_ms_median") is None else f"{r['ttft_ms_median']:.0f}"
        lines.append(f"| {r['dataset']} | {r['method']} | {r['identical_rows']}/{r['rows']} | {tau} | "
                     f"{acc} | {r['tokens_per_s']:.1f} | {ttft} | {r['exact_match']:.2f} | {r['chrf']:.1f} |")
    return "\n".join(lines)


def update_readme(readme: Path, report: dict) -> None:  # report: one run or merge_reports(...)
    from tasc_edge.files import atomic_write_text

    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise TascError(f"{readme}: no {README_START} ... {README_END} markers to replace")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, f"{head}{README_START}\n{readme_results(report)}\n{README_END}{tail}")
