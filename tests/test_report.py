"""Bench reports: schema round trip, MBSU arithmetic, device predictions, partial reports."""

import json
from dataclasses import replace

import pytest

from tasc_edge.cost import CostCurve
from tasc_edge.errors import TascError
from tasc_edge.predict import DeviceProfile, best_fixed_gamma, load_profile, predict
from tiny_gguf import write_tiny_gguf

bench = pytest.importorskip("tasc_edge.runtime.bench")
report_mod = pytest.importorskip("tasc_edge.runtime.report")


def run(row, method, tokens, total_s, tau=None, drafted=None, accepted=None, forwards=None, fwd_tokens=None):
    ours = tau is not None
    return bench.RowRun("d", row, method, tokens, total_s, 1.0, 50.0, tau, drafted, accepted, forwards,
                        fwd_tokens, *(0.1, 0.1, 0.5, 0.1) if ours else (None,) * 4)


def test_mbsu_and_speedup_arithmetic_on_known_inputs():
    runs = [
        run("a", "plain", [1] * 12, 1.2, 1.0, 0, 0, 12, 12),
        run("a", "tasc-spec", [1] * 12, 0.6, 3.0, 10, 8, 4, 14),  # 12 tokens in 4 forwards
        run("b", "plain", [2] * 6, 0.6, 1.0, 0, 0, 6, 6),
        run("b", "tasc-spec", [2] * 6, 0.4, 2.0, 4, 3, 3, 7),
    ]
    curve = CostCurve((1.0, 1.5, 2.0, 2.5, 3.0))
    (plain, spec) = bench.summarise(runs, ["plain", "tasc-spec"], curve)
    assert spec["speedup_median"] == pytest.approx((2.0 + 1.5) / 2)
    assert spec["identical_rows"] == 2
    assert spec["tau_mean"] == pytest.approx(18 / 7)  # tokens / target forwards over both rows
    assert spec["mbsu"] == spec["tau_mean"]  # c = 0 for an n-gram drafter: MBSU = tau / (gamma*0 + 1)
    assert spec["acceptance"] == pytest.approx(11 / 14)
    assert spec["drafted_wasted"] == 3
    mean_k = 21 / 7  # forward tokens per forward = 3 -> c(3) = 2.0
    assert spec["speedup_predicted"] == pytest.approx((18 / 7) / 2.0)
    assert plain["tau_mean"] == 1.0 and plain["speedup_median"] == 1.0
    assert mean_k == 3
    # rows that carry each forward's price on the curve (decode.DecodeStats.curve_cost) are
    # predicted from it: on a sawtooth curve the price at the mean row count is no estimate
    priced = [replace(r, curve_cost=cc) for r, cc in zip(runs, (None, 4.5, None, 3.5))]
    spec = bench.summarise(priced, ["plain", "tasc-spec"], curve)[1]
    assert spec["speedup_predicted"] == pytest.approx(18 / (4.5 + 3.5))


def test_decode_phase_speedup_leaves_out_the_first_forward():
    # plain: 0.3 s to the first token, then 10 tokens in 1.0 s; spec: its first forward
    # also committed 3 tokens (an accepted draft), then 8 tokens in 0.5 s
    plain = replace(run("a", "plain", [1] * 11, 1.3, 1.0, 0, 0, 11, 11), first_s=0.3, first_n=1)
    spec = replace(run("a", "tasc-spec", [1] * 11, 0.8, 2.0, 8, 6, 5, 13), first_s=0.3, first_n=3)
    assert bench.time_per_token(plain) == pytest.approx(0.1)
    assert bench.time_per_token(spec) == pytest.approx(0.5 / 8)
    _, s = bench.summarise([plain, spec], ["plain", "tasc-spec"])
    assert s["decode_speedup_median"] == pytest.approx(0.1 / (0.5 / 8))
    assert s["speedup_median"] == pytest.approx(1.3 / 0.8) and s["ttft_ms_median"] == pytest.approx(300)
    # a run whose first forward produced everything has no decode phase: no ratio, not 0 or inf
    assert bench.time_per_token(replace(spec, first_n=11)) is None
    assert bench.time_per_token(replace(spec, first_s=None)) is None


def test_gamma_sweep_rows_compare_with_plain_and_memory_delta():
    runs = [run("a", "plain", [1] * 8, 0.8, 1.0, 0, 0, 8, 8),
            run("a", "tasc-spec@4", [1] * 8, 0.5, 2.0, 12, 4, 4, 16),
            run("b", "plain", [2] * 8, 0.8, 1.0, 0, 0, 8, 8)]  # the sweep ran on row a only
    peaks = {"plain": 300.0, "tasc-spec@4": 312.5}
    plain, sweep = bench.summarise(runs, ["plain", "tasc-spec@4"], None, peaks)
    assert sweep["gamma"] == 4 and plain["gamma"] is None
    assert sweep["baseline"] == "plain" and sweep["rows"] == 1
    assert sweep["speedup_median"] == pytest.approx(0.8 / 0.5)
    assert sweep["peak_rss_mb"] == 312.5 and sweep["rss_delta_mb"] == pytest.approx(12.5)
    assert plain["rss_delta_mb"] == 0.0
    assert bench.method_gamma("tasc-spec+gen") is None and bench.method_gamma("tasc-spec@12") == 12


def test_median_of_repeats_keeps_the_middle_run():
    tries = [run("a", "pld", [1], t) for t in (0.9, 0.3, 0.5)]
    assert bench._median_run(tries).total_s == 0.5


def test_best_fixed_gamma():
    flat, steep = CostCurve.flat(16), CostCurve(tuple(1.0 + 0.9 * k for k in range(16)))
    assert best_fixed_gamma(0.9, flat) > best_fixed_gamma(0.9, steep)
    assert best_fixed_gamma(0.0, flat) == 0
    assert best_fixed_gamma(0.05, steep) == 0


def fake_report():
    return {"cost_curve": {"step_ms": 5.0, "ratios": [1.0, 1.5, 1.9, 2.2]}, "bandwidth_gbs": 20.0,
            "model_bytes": 80_000_000,
            "results": [{"dataset": "d", "method": "tasc-spec", "tau_mean": 2.0, "mbsu": 2.0,
                         "speedup_predicted": 1.3, "acceptance": 0.7},
                        {"dataset": "d", "method": "llama-pld", "tau_mean": None}]}


def test_predictions_are_monotonic_in_bandwidth():
    base = load_profile("pi5")
    tps = [predict(replace(base, bandwidth_sustained_gbs=bw), fake_report())[0].plain_tokens_per_s
           for bw in (2, 4, 8, 16, 32)]
    assert all(b > a for a, b in zip(tps, tps[1:]))
    (p,) = predict(base, fake_report())  # peers without instrumented internals are skipped
    assert p.tokens_per_s == pytest.approx(p.plain_tokens_per_s * 1.3)


def test_unknown_device_profile():
    with pytest.raises(TascError, match="unknown device profile 'pi9'"):
        load_profile("pi9")
    assert isinstance(load_profile("pi4"), DeviceProfile)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    for name, words in (("slots", ["large", "small", "milk"]), ("calls", ["json", "two", "hello"])):
        d = root / name
        d.mkdir()
        rows = [{"id": f"{name}-{i}", "prompt": f"the {w} coffee order {i}", "output": f"{{\"drink\": \"{w}\"}}"}
                for i, w in enumerate(words * 3)]
        (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", seed=9)


def bench_cfg(model, data_root, out):
    return bench.BenchConfig(datasets=["slots", "calls"], data_root=str(data_root),
                             methods=["pld", "tasc-spec", "llama-pld"], limit=3, max_new_tokens=16,
                             model=str(model), quant="as-is", n_ctx=256, out=str(out))


def test_bench_report_round_trip_and_plots(model, data_root, tmp_path):
    bench.run_bench(bench_cfg(model, data_root, tmp_path), log=lambda *_: None)
    loaded = report_mod.load_report(tmp_path)
    for key in ("schema", "machine", "model_sha256", "command", "cost_curve", "bandwidth_gbs", "results"):
        assert key in loaded
    assert loaded["machine"]["packages"]["llama-cpp-python"]
    entries = {(r["dataset"], r["method"]): r for r in loaded["results"]}
    for ds in ("slots", "calls"):
        for m in ("pld", "tasc-spec", "llama-pld"):
            r = entries[(ds, m)]
            for key in ("dataset", "method", "rows", "identical_rows", "speedup_median", "tau_mean",
                        "acceptance", "tokens_per_s", "mbsu"):
                assert key in r
            assert r["rows"] == 3
        assert entries[(ds, "tasc-spec")]["identical_rows"] == 3  # exact against our plain
        for m in ("tasc-spec", "llama-pld"):  # first-forward time measured for ours and peers
            assert 0 < entries[(ds, m)]["ttft_ms_median"] and entries[(ds, m)]["decode_speedup_median"] > 0
    assert "| slots | tasc-spec | 3 | 3/3 |" in (tmp_path / "bench.md").read_text()
    assert loaded["memory_mb"]["peak_by_method"]["tasc-spec"] > 0
    paths = report_mod.write_plots(loaded, tmp_path / "plots")
    assert len(paths) == 4 and all(p.stat().st_size > 5000 for p in paths)
    text = report_mod.run_report(tmp_path, "pi5", tmp_path, plots=False)
    assert "Predicted for Raspberry Pi 5" in text and (tmp_path / "predicted-pi5.md").is_file()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\nafter\n")
    report_mod.update_readme(readme, loaded)
    body = readme.read_text()
    assert "old" not in body and body.endswith("after\n") and "| slots | tasc-spec | 3/3 |" in body


def test_interrupted_bench_leaves_a_valid_partial_report(model, data_root, tmp_path):
    seen = []

    def log(line):
        seen.append(line)
        if "[1/3]" in line:  # Ctrl-C right after the first row
            raise KeyboardInterrupt

    bench.run_bench(bench_cfg(model, data_root, tmp_path), log=log)
    loaded = report_mod.load_report(tmp_path / "bench.json")
    assert loaded["interrupted"] is True
    assert {r["rows"] for r in loaded["results"]} == {1}
    assert "Interrupted" in (tmp_path / "bench.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_resumed_bench_keeps_measured_rows_and_runs_the_rest(model, data_root, tmp_path):
    def stop_after_first_row(line):
        if "[1/3]" in line:
            raise KeyboardInterrupt

    bench.run_bench(bench_cfg(model, data_root, tmp_path), log=stop_after_first_row)
    first = {(r["dataset"], r["row"], r["method"]): r["total_s"]
             for r in report_mod.load_report(tmp_path)["rows"]}
    assert len(first) == 5  # slots' first row: pld, tasc-spec, llama-pld, plain, llama-plain
    ran = []
    cfg = replace(bench_cfg(model, data_root, tmp_path), resume=True)
    report = bench.run_bench(cfg, log=ran.append)
    loaded = report_mod.load_report(tmp_path)
    again = {(r["dataset"], r["row"], r["method"]): r["total_s"] for r in loaded["rows"]}
    assert {k: again[k] for k in first} == first  # kept, not re-measured
    rows_run = [line for line in ran if "rows, ETA" in line]
    assert len(rows_run) == 5 and not any(line.startswith("slots [1/3]") for line in rows_run)
    assert rows_run[-1].startswith("calls [3/3] 5/5 rows")
    assert {r["rows"] for r in loaded["results"]} == {3} and not loaded.get("interrupted")
    assert len(report["resumed"]["segments"]) == 1
    assert "Resumed" in (tmp_path / "bench.md").read_text()
    with pytest.raises(TascError, match="other settings \\(max_new_tokens\\)"):
        bench.run_bench(replace(cfg, max_new_tokens=8), log=lambda *_: None)
    with pytest.raises(TascError, match="no .*bench.json to resume"):
        bench.run_bench(replace(cfg, out=str(tmp_path / "empty")), log=lambda *_: None)


def test_sigterm_leaves_a_valid_partial_report(model, data_root, tmp_path):
    import os
    import signal

    def log(line):
        if "[1/3]" in line:  # `kill <pid>` of a bench running in the background
            os.kill(os.getpid(), signal.SIGTERM)

    bench.run_bench(bench_cfg(model, data_root, tmp_path), log=log)
    loaded = report_mod.load_report(tmp_path / "bench.json")
    assert loaded["interrupted"] is True and {r["rows"] for r in loaded["results"]} == {1}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored


def test_report_refuses_other_schema(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(TascError, match="schema"):
        report_mod.load_report(tmp_path)


def test_merge_reports_last_run_wins_per_dataset():
    def rep(started, datasets, tag):
        return {"schema": "tasc-edge.bench/1", "started": started, "cost_curve": {"step_ms": 1.0, "ratios": [1.0]},
                "results": [{"dataset": d, "method": "plain", "tag": tag} for d in datasets]}

    merged = report_mod.merge_reports([rep("a", ["x", "y"], 1), rep("b", ["y", "z"], 2)])
    assert [(r["dataset"], r["tag"]) for r in merged["results"]] == [("x", 1), ("y", 2), ("z", 2)]
    assert [r["datasets"] for r in merged["runs"]] == [["x"], ["y", "z"]]


def test_llama_prompt_lookup_peer_runs_prompts_longer_than_a_batch(model):
    """llama-cpp-python sizes its logits buffer by n_batch unless logits_all=True, while its
    draft-model path writes every position: a 600-token prompt failed before the peer set it."""
    peers = pytest.importorskip("tasc_edge.runtime.peers")
    peer = peers.LlamaPeer(model, n_ctx=1024, threads=2, pld_tokens=4)
    try:
        first = []
        out = peer.generate(list(range(3, 43)) * 15, 8, frozenset(), first.append)
    finally:
        peer.close()
    assert len(out) == 8 and first == [1]


def test_another_quantization_is_a_fastest_plain_candidate(model, data_root, tmp_path, monkeypatch):
    # `llama-plain:<quant>` runs plain llama.cpp on --model requantized: its own baseline, and a
    # candidate for the "vs fastest plain" column whichever configuration turns out fastest
    monkeypatch.setenv("TASC_EDGE_CACHE", str(tmp_path / "cache"))
    cfg = replace(bench_cfg(model, data_root, tmp_path / "out"), datasets=["slots"],
                  methods=["plain", "llama-plain", "llama-plain:q4_0", "tasc-spec"])
    report = bench.run_bench(cfg, log=lambda *_: None)
    assert report["peer_models"]["llama-plain"] == "tiny.gguf"
    assert report["peer_models"]["llama-plain:q4_0"].endswith(".q4_0.gguf")
    entries = {r["method"]: r for r in report["results"]}
    assert entries["llama-plain:q4_0"]["speedup_median"] == 1.0  # its own baseline
    loaded = json.loads((tmp_path / "out" / "bench.json").read_text())
    total = {m: sum(r["total_s"] for r in loaded["rows"] if r["method"] == m)
             for m in ("plain", "llama-plain", "llama-plain:q4_0")}
    assert entries["tasc-spec"]["fastest_plain"] == min(total, key=total.get)
    with pytest.raises(TascError, match="unknown quantization in llama-plain:q9_9"):
        bench.run_bench(replace(cfg, methods=["plain", "llama-plain:q9_9"], out=str(tmp_path / "o2")),
                        log=lambda *_: None)
    with pytest.raises(TascError, match="llama-plain:<quant>"):
        bench.run_bench(replace(cfg, methods=["plain", "llama-fast"], out=str(tmp_path / "o3")),
                        log=lambda *_: None)


def test_fastest_plain_counts_every_plain_configuration_in_the_run():
    rows = [run(r, m, [1, 2], t, **({"tau": 2.0, "drafted": 2, "accepted": 1, "forwards": 1, "fwd_tokens": 3}
                                   if m == "tasc-spec" else {}))
            for r in ("a", "b") for m, t in (("plain", 1.0), ("llama-plain", 0.6), ("llama-plain:q4_0-pure", 0.4),
                                             ("tasc-spec", 0.5))]
    out = {e["method"]: e for e in bench.summarise(rows, ["plain", "llama-plain", "llama-plain:q4_0-pure",
                                                          "tasc-spec"])}
    assert out["tasc-spec"]["fastest_plain"] == "llama-plain:q4_0-pure"
    assert out["tasc-spec"]["speedup_vs_fastest_plain"] == pytest.approx(0.8)
    assert out["tasc-spec"]["speedup_median"] == pytest.approx(2.0)  # still against its own plain
    assert out["llama-plain:q4_0-pure"]["speedup_median"] == 1.0
