"""VocabTrim drafters through the real export stage on a tiny random HF Llama: calibrate,
build + distill a 1-layer self-drafter, export full and trimmed ONNX heads into the bundle,
run them against the ONNX target (exact), and refuse a drafter with another tokenizer."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("torch")

from tasc_edge.decode import GenerateConfig, generate  # noqa: E402
from tasc_edge.drafters import NgramDrafter  # noqa: E402
from tasc_edge.errors import TascError  # noqa: E402
from tasc_edge.export.bundle import export_bundle  # noqa: E402
from tasc_edge.export.drafter import DrafterConfig  # noqa: E402
from tasc_edge.model_drafter import ChainedDrafter  # noqa: E402
from tasc_edge.runtime.bundle import load_bundle, load_table, open_backend, open_drafter  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402
from test_bundle import demo_data_root, export_cfg, hf  # noqa: E402,F401  (module fixture)


@pytest.fixture(scope="module")
def bundle_path(hf, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("vt") / "b"
    cfg = export_cfg(hf, out, "int4", train_limit=12, max_new_tokens=24)
    cfg.tables.corpus = "both"
    cfg.drafter = DrafterConfig(layers=1, top_k=(48, 96), distill_steps=20, calib="target,raw,drafter")
    export_bundle(cfg, log=lambda *_: None)
    return out


def test_manifest_lists_drafters_with_bytes_and_coverage(bundle_path):
    drafters = load_bundle(bundle_path).manifest["drafters"]
    assert set(drafters) == {"full", "k48", "k96", "k48-raw", "k96-raw", "k48-drafter", "k96-drafter"}
    assert drafters["k48-raw"]["calib"] == "raw" and drafters["k48"]["calib"] == "target"
    full, k48, k96 = drafters["full"], drafters["k48"], drafters["k96"]
    assert full["k"] is None and k48["k"] >= 48 and k96["k"] >= 96
    # fewer head rows, fewer bytes per draft step; all of them cheaper than the target
    assert k48["step_bytes"] < k96["step_bytes"] < full["step_bytes"] < full["target_step_bytes"]
    assert 0 < k48["coverage"] <= k96["coverage"] <= 1.0
    assert full["distill"]["steps"] == 20 and full["distill"]["kl_last"] is not None
    # the KL ran over the kept ids (target and raw top-96 sets, stop tokens), not all 320 rows
    assert 96 <= full["distill"]["vocab"] <= 2 * 96 + 3 < 320


def test_distill_ids_are_the_union_of_the_largest_kept_sets():
    from tasc_edge.export.vocabtrim import distill_ids

    sources = {"target": [[5, 5, 5, 6, 6, 7]], "reference": [[8, 8, 9]], "raw": [[1, 8, 8]]}
    cfg = DrafterConfig(top_k=(1, 2))
    assert distill_ids(cfg, sources, ["target"], 16, "h", {2}).tolist() == [2, 5, 6]
    # the drafter's generations do not exist yet: that source counts the target's
    both = distill_ids(cfg, sources, ["drafter", "reference"], 16, "h", {2})
    assert both.tolist() == [2, 5, 6, 8, 9]
    assert distill_ids(replace(cfg, distill_vocab="full"), sources, ["target"], 16, "h", {2}) is None
    assert distill_ids(DrafterConfig(top_k=(), coverage=None), sources, ["target"], 16, "h", {2}) is None
    with pytest.raises(TascError, match="--distill-vocab"):
        distill_ids(replace(cfg, distill_vocab="some"), sources, ["target"], 16, "h", {2})


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_distillation_over_kept_ids_trains_the_drafter(hf, family):  # noqa: F811
    """Both families the exporter meets: Llama (SmolLM2), and Gemma 3, whose CausalLM is its
    own `base_model` (the decoder is `get_decoder()`) and whose layers alternate attention."""
    import torch
    import transformers

    from tasc_edge.export.drafter import build_self_drafter, distill, load_target

    if family == "llama":
        target = load_target(hf)
    else:
        torch.manual_seed(0)
        target = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8)).eval()
    drafter = build_self_drafter(target, 1)
    before = [p.detach().clone() for p in drafter.model.layers.parameters()]
    head_before = drafter.get_output_embeddings().weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 320, (40,), generator=g).tolist() for _ in range(4)]
    ids = list(range(3, 120))
    stats = distill(drafter, target, seqs, DrafterConfig(distill_steps=30, lr=3e-3), lambda *_: None, ids=ids)
    assert stats["vocab"] == len(ids) and stats["kl_last"] < stats["kl_first"]
    assert any(not torch.equal(a, b) for a, b in zip(before, drafter.model.layers.parameters()))
    assert torch.equal(drafter.get_output_embeddings().weight, head_before)  # head and embeddings frozen


def assert_drafters_exact(bundle_path, variants, check=lambda model, target, prompt: None) -> None:
    """Greedy output with each drafter variant, alone and chained behind the bundle's task
    n-grams, equals plain greedy on 6 demo prompts, with drafts made; `check` adds per-model
    assertions. Shared by the ONNX and the GGUF drafter tests."""
    bundle = load_bundle(bundle_path)
    with open_backend(bundle, n_ctx=1024, n_threads=2) as target:
        cfg = GenerateConfig(max_new_tokens=32, max_draft=8, stop_tokens=target.stop_tokens)
        ps = [target.chat_prompt(r.prompt) for r in load_task("demo").test[:6]]
        refs = [generate(target, p, None, cfg).tokens for p in ps]
        table = load_table(bundle, "demo", target.tokenizer_hash)
        for variant in variants:
            model = open_drafter(bundle, variant, target, n_threads=1)
            drafted = 0
            for drafter in (model, ChainedDrafter(NgramDrafter(table), model)):
                for p, ref in zip(ps, refs):
                    g = generate(target, p, drafter, cfg)
                    assert g.tokens == ref
                    drafted += g.stats.drafted
            assert drafted > 0 and model.steps > 0
            check(model, target, ps[0])
            model.close()


def test_trimmed_drafters_are_exact_against_the_onnx_target(bundle_path):
    def check(model, target, prompt) -> None:
        assert model.backend.n_vocab == (model.kept.k if model.kept else target.n_vocab)
        if model.kept is not None:
            model.begin(prompt)
            assert set(model.draft(4).tokens) <= set(model.kept.ids.tolist())

    assert_drafters_exact(bundle_path, ("full", "k48"), check)


def test_onnx_drafters_share_one_mapped_embedding_table_with_identical_logits(bundle_path, tmp_path):
    """Target and drafters take `inputs_embeds` from one mapped embed.npy (a self-drafter's
    table is the target's), not a copy per onnxruntime session; no graph holds the table, and
    the drafter's logits are bit-identical to the same drafter exported with it inside."""
    import onnx

    from tasc_edge.export.onnx import export_onnx, move_embedding_out
    from tasc_edge.runtime.onnx_backend import OnnxBackend

    bundle = load_bundle(bundle_path)
    entries = bundle.manifest["drafters"]
    assert {e["embed"] for e in entries.values()} == {"embed.npy"}
    assert "embed.npy" in {f["path"] for f in bundle.manifest["files"]}
    assert not (bundle_path / "drafter" / "embed.npy").exists()  # the copy was dropped
    table = np.load(bundle_path / "embed.npy", mmap_mode="r")
    for model in ("model.onnx", "drafter/k48/model.onnx", "drafter/full/model.onnx"):
        graph = onnx.load(str(bundle_path / model)).graph
        assert "inputs_embeds" in {i.name for i in graph.input}
        assert not any(tuple(i.dims) == table.shape for i in graph.initializer)  # no table inside
    with pytest.raises(TascError, match="no embedding Gather"):
        move_embedding_out(onnx.load(str(bundle_path / "drafter" / "k48" / "model.onnx")))

    inside = tmp_path / "inside"
    inside.mkdir()
    export_onnx(bundle_path / ".work" / "drafter-hf", tmp_path / "w", inside, "int4", lambda *_: None,
                keep_rows=np.load(bundle_path / "drafter" / "k48" / "kept.npz")["ids"])
    tokens = [5, 17, 99, 3, 250, 41, 7]
    with OnnxBackend(inside / "model.onnx", min_rows=1) as a, OnnxBackend(
            bundle_path / "drafter" / "k48" / "model.onnx", min_rows=1, input_embeddings=table) as b:
        a.prefill(tokens[:4]), b.prefill(tokens[:4])
        assert np.array_equal(a.forward(tokens[4:]), b.forward(tokens[4:]))
        assert np.array_equal(a.forward([9]), b.forward([9]))
    with pytest.raises(TascError, match="pass the table"):
        OnnxBackend(bundle_path / "drafter" / "k48" / "model.onnx")


def test_drafter_with_another_tokenizer_is_refused(bundle_path, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_path, copy)
    tok = copy / "drafter" / "k48" / "tokenizer.json"
    spec = json.loads(tok.read_text())
    spec["added_tokens"][0]["content"] = "<|other|>"  # a different tokenizer, same size
    tok.write_text(json.dumps(spec))
    with pytest.raises(TascError, match="truncated or replaced|sha256"):
        load_bundle(copy)  # the manifest catches the edit first...
    bundle = load_bundle(copy, verify=False)
    with open_backend(bundle, n_ctx=1024, n_threads=2) as target:
        with pytest.raises(TascError, match="must share the target's tokenizer"):
            open_drafter(bundle, "k48", target)  # ...and the drafter check without it
        with pytest.raises(TascError, match="no drafter 'k7'"):
            open_drafter(bundle, "k7", target)


def test_kept_ids_cover_stop_tokens(bundle_path):
    from tasc_edge.vocab_trim import KeptVocab

    bundle = load_bundle(bundle_path)
    with open_backend(bundle, n_ctx=1024, n_threads=2) as target:
        kept = KeptVocab.load(bundle_path / "drafter" / "k48" / "kept.npz", target.tokenizer_hash)
        assert set(target.stop_tokens) <= set(kept.ids.tolist())
        assert np.all(np.diff(kept.ids) > 0)


def test_bench_runs_drafters_with_mbsu_counting_drafter_reads(bundle_path, tmp_path):
    from tasc_edge.runtime.bench import BenchConfig, run_bench

    cfg = BenchConfig(datasets=["demo"], data_root=str(demo_data_root(tmp_path)), limit=3, max_new_tokens=24,
                      methods=["plain", "model:full", "model:k48", "chained:k48"], n_ctx=1024,
                      threads=2, bundle=str(bundle_path), out=str(tmp_path / "out"))
    report = run_bench(cfg, log=lambda *_: None)
    by = {r["method"]: r for r in report["results"]}
    drafters = load_bundle(bundle_path).manifest["drafters"]
    for m in ("model:full", "model:k48", "chained:k48"):
        r = by[m]
        assert r["identical_rows"] == 3 and r["baseline"] == "plain"
        assert r["c"] == drafters[m.split(":")[1]]["c"] > 0
        # MBSU = tau / (gamma * c + 1) with gamma = drafter steps per target forward
        assert r["mbsu"] == pytest.approx(r["tau_mean"] / (r["draft_steps_per_forward"] * r["c"] + 1))
        assert r["draft_steps_per_forward"] > 0 and r["mbsu"] < r["tau_mean"]
    assert by["plain"]["mbsu"] == by["plain"]["tau_mean"] == 1.0
    with pytest.raises(TascError, match="no drafter"):
        run_bench(replace(cfg, methods=["plain", "model:k5"]), log=lambda *_: None)


def test_bench_chain_threshold_per_dataset(bundle_path, tmp_path):
    """`--chain-ask-below demo=1.01` makes the chained drafter look at the model before every
    n-gram draft on that dataset (more drafter steps per forward than gap-filling only); a
    dataset name not in the run is refused before anything loads."""
    from tasc_edge.cli import _ask_below_arg
    from tasc_edge.runtime.bench import BenchConfig, run_bench

    assert _ask_below_arg("0.9") == 0.9
    assert _ask_below_arg("demo=1.01,other=0.5") == {"demo": 1.01, "other": 0.5}
    for bad in ("demo=high", "demo=1.0,other", "high"):
        with pytest.raises(argparse.ArgumentTypeError, match="TASK=P"):
            _ask_below_arg(bad)
    cfg = BenchConfig(datasets=["demo"], data_root=str(demo_data_root(tmp_path)), limit=3, max_new_tokens=24,
                      methods=["plain", "chained:k48"], n_ctx=1024, threads=2, bundle=str(bundle_path))
    steps = {}
    for setting in (None, {"demo": 1.01}):
        report = run_bench(replace(cfg, chain_ask_below=setting, out=str(tmp_path / f"out{setting is None}")),
                           log=lambda *_: None)
        chained = next(r for r in report["results"] if r["method"] == "chained:k48")
        assert chained["identical_rows"] == 3
        steps[setting is None] = chained["draft_steps_per_forward"]
    assert steps[False] > steps[True]
    with pytest.raises(TascError, match="snips_slots, not among --datasets demo"):
        run_bench(replace(cfg, chain_ask_below={"snips_slots": 0.9}), log=lambda *_: None)


def test_cli_run_with_the_bundle_drafter(bundle_path, capsys):
    from tasc_edge.cli import main

    base = ["run", "--bundle", str(bundle_path), "--task", "demo", "--limit", "3",
            "--max-new-tokens", "24", "--n-ctx", "1024"]
    assert main([*base, "--method", "chained", "--drafter", "k48"]) == 0
    assert "3/3" in capsys.readouterr().out  # identical to plain on every row
    assert main([*base, "--method", "chained", "--drafter", "k48", "--chain-ask-below", "1.0"]) == 0
    assert "3/3" in capsys.readouterr().out
    assert main([*base, "--method", "model", "--drafter", "full", "--temperature", "0.8"]) == 0
    assert main([*base, "--method", "model"]) == 2
    assert "--drafter VARIANT" in capsys.readouterr().err


def test_top1_agreement_over_the_distilled_rows():
    """A drafter whose untrained rows win a full-vocabulary argmax still agrees wherever its
    best *distilled* row is the target's token: that is what its trimmed head computes."""
    import torch
    from types import SimpleNamespace

    from tasc_edge.export.drafter import top1_agreement

    target_logits = torch.full((1, 4, 10), -5.0)
    target_logits[0, torch.arange(4), torch.tensor([2, 3, 2, 5])] = 5.0
    drafter_logits = target_logits.clone()
    drafter_logits[0, :, 9] = 50.0  # an untrained row, never kept
    drafter_logits[0, 3, 5], drafter_logits[0, 3, 3] = 0.0, 1.0  # wrong among the kept at pos 3
    target = lambda ids: SimpleNamespace(logits=target_logits)  # noqa: E731
    drafter = lambda ids: SimpleNamespace(logits=drafter_logits)  # noqa: E731
    assert top1_agreement(drafter, target, [[1, 2, 3, 4]]) == 0.0
    assert top1_agreement(drafter, target, [[1, 2, 3, 4]], ids=[2, 3, 5]) == 0.75
