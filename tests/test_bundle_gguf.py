"""GGUF bundles on the tiny random GGUF: export -> verified load -> exact run; clear refusals."""

from __future__ import annotations

import json

import pytest

from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import NgramDrafter
from tasc_edge.errors import TascError
from tiny_gguf import write_tiny_gguf

pytest.importorskip("llama_cpp")
from tasc_edge.export.bundle import ExportBundleConfig, export_bundle  # noqa: E402
from tasc_edge.export.tables import ExportTablesConfig  # noqa: E402
from tasc_edge.runtime.bundle import load_bundle, load_table, open_backend  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402


def test_gguf_bundle_round_trip_and_refusals(tmp_path):
    model = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3)
    cfg = ExportBundleConfig(tasks=["demo"], out=str(tmp_path / "b"), model=str(model), format="gguf",
                             gguf_quant="as-is",
                             tables=ExportTablesConfig(task="", out="", n_ctx=512))
    [out] = export_bundle(cfg, log=lambda *_: None)
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m["format"] == "gguf" and m["model"]["architecture"] == "llama"
    assert {f["path"] for f in m["files"]} == {"model.gguf", "tables/demo.npz"}
    with open_backend(bundle, n_ctx=512, n_threads=2) as b:
        table = load_table(bundle, "demo", b.tokenizer_hash)
        cfg_g = GenerateConfig(max_new_tokens=24, stop_tokens=b.stop_tokens)
        for row in load_task("demo").test[:4]:
            p = b.chat_prompt(row.prompt)
            assert generate(b, p, NgramDrafter(table), cfg_g).tokens == generate(b, p, None, cfg_g).tokens

    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(TascError, match="format version 99"):
        load_bundle(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(TascError, match="not valid JSON"):
        load_bundle(out)


def test_hf_checkpoint_to_gguf_says_what_to_do(tmp_path):
    """Llama-family checkpoints are written by export/gguf_write.py (tested in test_ft); an
    empty folder or another architecture gets one line saying what to do instead."""
    import json

    (tmp_path / "hf").mkdir()
    cfg = ExportBundleConfig(tasks=["demo"], out=str(tmp_path / "b"), model=str(tmp_path / "hf"),
                             format="gguf")
    with pytest.raises(TascError, match="no config.json"):
        export_bundle(cfg, log=lambda *_: None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(TascError, match="convert_hf_to_gguf.py"):
        export_bundle(cfg, log=lambda *_: None)
    assert not (tmp_path / "b" / "manifest.json").exists()
