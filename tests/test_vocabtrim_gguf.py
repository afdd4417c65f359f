"""VocabTrim drafters on llama.cpp (export/gguf_drafter.py) on a tiny random HF Llama and a
tiny random Gemma 3: the trimmed drafter GGUF has a vocabulary of its K kept ids and takes
embeddings as input; its logits are the full drafter's at the kept ids (for Gemma that needs
the table pre-scaled: llama.cpp scales token rows, not fed embeddings), it reads fewer bytes,
and speculative output with it stays exactly the plain output of the GGUF target."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("gguf")

from tasc_edge.errors import TascError  # noqa: E402
from tasc_edge.export.bundle import ExportBundleConfig, export_bundle  # noqa: E402
from tasc_edge.export.drafter import DrafterConfig  # noqa: E402
from tasc_edge.export.tables import ExportTablesConfig  # noqa: E402
from tasc_edge.runtime.bundle import load_bundle, open_backend, open_drafter  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402
from test_bundle import demo_data_root, hf  # noqa: E402,F401  (module fixture)
from test_vocabtrim_bundle import assert_drafters_exact  # noqa: E402
from tiny_hf import write_tiny_hf  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def bundle_path(request, hf, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp(f"vtg-{request.param}")
    if request.param != "llama":
        hf = write_tiny_hf(root / "hf", arch=request.param)
    out = root / "b"
    tables = ExportTablesConfig(task="", out="", corpus="both", n_ctx=1024, train_limit=12, max_new_tokens=24)
    export_bundle(ExportBundleConfig(tasks=["demo"], out=str(out), model=str(hf), format="gguf",
                                     gguf_quant="q8_0", tables=tables,
                                     drafter=DrafterConfig(layers=1, top_k=(48,), distill_steps=20)),
                  log=lambda *_: None)
    return out


def test_trimmed_gguf_drafter_reads_fewer_bytes_and_has_a_kept_vocabulary(bundle_path):
    drafters = load_bundle(bundle_path).manifest["drafters"]
    full, k48 = drafters["full"], drafters["k48"]
    assert k48["step_bytes"] < full["step_bytes"] < full["target_step_bytes"]
    assert k48["embed"] == "drafter/embed.npy" and "embed" not in full  # full reads token ids
    assert (bundle_path / "drafter" / "embed.npy").is_file()


def test_trimmed_logits_are_the_full_drafters_at_the_kept_ids(bundle_path):
    bundle = load_bundle(bundle_path)
    with open_backend(bundle, n_ctx=1024, n_threads=2) as target:
        full = open_drafter(bundle, "full", target, n_threads=1)
        trimmed = open_drafter(bundle, "k48", target, n_threads=1)
        assert trimmed.backend.n_vocab == trimmed.kept.k < full.backend.n_vocab == target.n_vocab
        ids = target.chat_prompt(load_task("demo").test[0].prompt)
        full.backend.prefill(ids[:-6])
        trimmed.backend.prefill(ids[:-6])
        a = full.backend.forward(ids[-6:])[:, trimmed.kept.ids]
        b = trimmed.backend.forward(ids[-6:])
        # same network and head rows; the inputs differ only by the Q8_0 vs fp16 embedding rows
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
        assert (a.argmax(-1) == b.argmax(-1)).sum() >= 5
        # rollback + re-feed gives the same logits (the embedding path keeps its cache in step)
        trimmed.backend.rollback(3)
        assert np.allclose(trimmed.backend.forward(ids[-3:]), b[-3:], atol=1e-4)
        full.close()
        trimmed.close()


def test_gguf_drafters_are_exact_against_the_llama_target(bundle_path):
    assert_drafters_exact(bundle_path, ("full", "k48"))


def test_trimmed_gguf_drafter_refuses_another_vocabulary(bundle_path, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle_path, copy)
    embed = copy / "drafter" / "embed.npy"
    np.save(embed, np.load(embed)[:-1], allow_pickle=False)  # a table of another vocabulary
    bundle = load_bundle(copy, verify=False)
    with open_backend(bundle, n_ctx=1024, n_threads=2) as target:
        with pytest.raises(TascError, match="must share the target's tokenizer"):
            open_drafter(bundle, "k48", target)


def test_bench_runs_gguf_drafters_with_mbsu(bundle_path, tmp_path):
    from tasc_edge.runtime.bench import BenchConfig, run_bench

    cfg = BenchConfig(datasets=["demo"], data_root=str(demo_data_root(tmp_path)), limit=3, max_new_tokens=24,
                      methods=["plain", "model:k48", "chained:k48"], n_ctx=1024, threads=2,
                      bundle=str(bundle_path), out=str(tmp_path / "out"))
    report = run_bench(cfg, log=lambda *_: None)
    by = {r["method"]: r for r in report["results"]}
    assert report["backend"] == "llama.cpp"
    for m in ("model:k48", "chained:k48"):
        assert by[m]["identical_rows"] == 3 and 0 < by[m]["c"] < 1
