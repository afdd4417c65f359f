"""TASC-ft on a tiny random HF Llama (seconds): vocabulary expansion round trip, embedding
initialisation, fine-tuning resume, the GGUF writer against torch, and the runtime refusing
a table made with the pre-expansion tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("llama_cpp")
tokenizers = pytest.importorskip("tokenizers")

from safetensors.torch import load_file  # noqa: E402

from tasc_edge.errors import TascError  # noqa: E402
from tasc_edge.export.bundle import ExportBundleConfig, export_bundle  # noqa: E402
from tasc_edge.export.ft_expand import ExpandConfig, expand_vocabulary, run_expand  # noqa: E402
from tasc_edge.export.ft_train import TrainConfig, run_train  # noqa: E402
from tasc_edge.export.gguf_write import write_gguf  # noqa: E402
from tasc_edge.export.tables import ExportTablesConfig  # noqa: E402
from tasc_edge.runtime.bundle import load_bundle, load_table, open_backend  # noqa: E402
from tasc_edge.runtime.ft_bench import FtBenchConfig, paired_delta, run_ft_bench  # noqa: E402
from tasc_edge.runtime.llama_backend import LlamaCppBackend  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402
from tiny_hf import write_tiny_hf  # noqa: E402

QUIET = lambda *_: None  # noqa: E731
OUTPUTS = [r.output for r in load_task("demo").train]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return write_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def expanded(hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "x"
    return run_expand(ExpandConfig(task="demo", out=str(out), model=str(hf), budget=40, per_round=10,
                                   min_count=3), log=QUIET)


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_expansion_round_trips_every_train_output_and_compresses(hf, expanded):
    info = json.loads((expanded / "expansion.json").read_text())
    assert len(info["tokens"]) == 40 and [r["vocab_added"] for r in info["rounds"]] == [10, 20, 30, 40]
    tok = tokenizers.Tokenizer.from_file(str(expanded / "tokenizer.json"))  # what the runtime loads
    base = tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json"))
    for text in OUTPUTS:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    before = sum(len(base.encode(t, add_special_tokens=False).ids) for t in OUTPUTS)
    after = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in OUTPUTS)
    assert after < 0.7 * before  # the demo's JSON keys compress well
    assert [r["compression"] for r in info["rounds"]] == sorted(r["compression"] for r in info["rounds"])
    for j, text in enumerate(info["tokens"]):  # each new token: one id, after the base vocabulary,
        assert tok.token_to_id(text) == info["base_vocab"] + j  # an exact concatenation of old ones
        assert base.decode(base.encode(text, add_special_tokens=False).ids) == text
    assert any(len(t.encode()) > 32 for t in info["tokens"])  # llama-cpp-python's piece limit


def test_new_rows_start_as_the_mean_of_their_parts(hf, expanded):
    old, new = weights(hf)["model.embed_tokens.weight"], weights(expanded)["model.embed_tokens.weight"]
    info = json.loads((expanded / "expansion.json").read_text())
    base = tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json"))
    assert torch.equal(new[: len(old)], old)
    for j, text in enumerate(info["tokens"]):
        parts = base.encode(text, add_special_tokens=False).ids
        assert torch.allclose(new[len(old) + j], old[parts].mean(0))


def test_new_tokens_respect_word_boundaries(expanded):
    from tasc_edge.export.ft_expand import cuts_words

    assert cuts_words(", a", "x, area[1], a b") == 0.5  # ", a" inside ", area" cuts the word
    assert cuts_words(" coffee shop", "a coffee shop. a coffee shops") == 0.5
    assert cuts_words('": "', '{"a": "b"}') == 0.0
    for text in json.loads((expanded / "expansion.json").read_text())["tokens"]:
        assert not text[-1].isspace()  # the next word keeps its leading space


def test_expansion_refuses_an_empty_corpus():
    with pytest.raises(TascError, match="no train outputs"):
        expand_vocabulary("{}", [], ExpandConfig(task="t", out="o"))


def test_training_resumes_to_the_same_weights_and_keeps_old_rows(expanded, tmp_path):
    def cfg(out: Path, **kw) -> TrainConfig:
        return TrainConfig(task="demo", out=str(out), model=str(expanded), steps=4, batch_size=4,
                           save_every=10, train_limit=40, **kw)

    whole = run_train(cfg(tmp_path / "whole"), log=QUIET)
    assert run_train(cfg(tmp_path / "cut", stop_after=2), log=QUIET).name == ".cut.ckpt"
    assert not (tmp_path / "cut").exists()  # an interrupted run leaves no checkpoint that looks done
    resumed = run_train(cfg(tmp_path / "cut"), log=QUIET)
    assert json.loads((resumed / "ft.json").read_text())["resumed_at"] == 2
    a, b, src = weights(whole), weights(resumed), weights(expanded)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    base_vocab = json.loads((expanded / "expansion.json").read_text())["base_vocab"]
    emb, emb0 = a["model.embed_tokens.weight"], src["model.embed_tokens.weight"]
    assert torch.equal(emb[:base_vocab], emb0[:base_vocab])  # old rows: frozen
    assert not torch.equal(emb[base_vocab:], emb0[base_vocab:])  # new rows: trained
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[q], src[q])  # LoRA merged into the blocks


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_writer_matches_torch_logits(arch, hf, tmp_path):
    import transformers

    if arch != "llama":
        hf = write_tiny_hf(tmp_path / arch, arch=arch)
    path = write_gguf(hf, tmp_path / "m.gguf", log=QUIET)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    with LlamaCppBackend(path, n_ctx=256, n_threads=2) as b:
        ids = b.chat_prompt(load_task("demo").test[0].prompt)[:40]
        b.prefill(ids[:-8])
        got = b.forward(ids[-8:])
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0, -8:].numpy()
    # F16 weights: ~4% of the largest logit here; without the q/k permutation (llama) or the
    # norms' +1 (gemma3) it is ~150%
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).sum() >= 6  # near-ties may flip in F16


def gguf_bundle(model: Path, out: Path) -> Path:
    tables = ExportTablesConfig(task="", out="", corpus="reference", n_ctx=1024)
    export_bundle(ExportBundleConfig(tasks=["demo"], out=str(out), model=str(model), format="gguf",
                                     gguf_quant="q8_0", tables=tables), log=QUIET)
    return out


def test_expanded_gguf_bundle_tokenizes_like_tokenizers_and_refuses_old_tables(hf, expanded, tmp_path):
    base_bundle = load_bundle(gguf_bundle(hf, tmp_path / "base"))
    x_bundle = load_bundle(gguf_bundle(expanded, tmp_path / "x"))
    tok = tokenizers.Tokenizer.from_file(str(expanded / "tokenizer.json"))
    with open_backend(x_bundle, n_ctx=1024, n_threads=2) as b:
        assert b.n_vocab == tok.get_vocab_size()
        for text in OUTPUTS:
            ids = b.tokenize(text)
            assert ids == tok.encode(text, add_special_tokens=False).ids
            assert b.detokenize(ids) == text
        assert load_table(x_bundle, "demo", b.tokenizer_hash) is not None
        with pytest.raises(TascError, match="tokenizer"):
            load_table(base_bundle, "demo", b.tokenizer_hash)  # a table of the old vocabulary


def test_ft_bench_tasc_spec_on_the_expanded_model_is_exact(hf, expanded, tmp_path):
    bundles = {"base": gguf_bundle(hf, tmp_path / "base"), "ftx": gguf_bundle(expanded, tmp_path / "x")}
    report = run_ft_bench(FtBenchConfig(task="demo",
                                        bundles={k: str(v) for k, v in bundles.items()}, baseline="base",
                                        limit=4, max_new_tokens=24, n_ctx=1024, out=str(tmp_path / "rep")),
                          log=QUIET)
    by = {(r["model"], r["method"]): r for r in report["results"]}
    for name in bundles:
        assert by[(name, "tasc-spec")]["identical_rows"] == 4
    assert by[("base", "plain")]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert by[("base", "plain")]["chrf_vs_baseline"] == [0.0, 0.0, 0.0]
    x = by[("ftx", "plain")]
    assert x["chrf_vs_baseline"][0] == pytest.approx(x["chrf"] - by[("base", "plain")]["chrf"])
    assert x["chrf_vs_baseline"][1] <= x["chrf_vs_baseline"][0] <= x["chrf_vs_baseline"][2]
    assert (tmp_path / "rep" / "ft-bench.md").is_file()


def test_paired_delta_interval():
    assert paired_delta([3.0] * 10) == [3.0, 3.0, 3.0]
    mean, low, high = paired_delta([-10.0, 10.0] * 25)
    assert mean == 0.0 and -4.0 < low < -1.0 and 1.0 < high < 4.0  # sd 10 / sqrt(50) = 1.41
    assert paired_delta([]) is None


def test_expanded_model_exports_to_onnx_with_its_tokenizer_and_runs_exact(expanded, tmp_path):
    from tasc_edge.decode import GenerateConfig, generate
    from tasc_edge.drafters import make_drafter

    tables = ExportTablesConfig(task="", out="", corpus="reference", n_ctx=1024)
    export_bundle(ExportBundleConfig(tasks=["demo"], out=str(tmp_path / "onnx"), model=str(expanded),
                                     format="onnx", onnx_quant="int4", tables=tables), log=QUIET)
    bundle = load_bundle(tmp_path / "onnx")
    tok = tokenizers.Tokenizer.from_file(str(expanded / "tokenizer.json"))
    with open_backend(bundle, n_ctx=1024, n_threads=2) as b:
        assert bundle.manifest["tokenizer_hash"] == b.tokenizer_hash
        assert b.n_vocab == tok.get_vocab_size()
        for text in OUTPUTS[:50]:
            assert b.detokenize(b.tokenize(text)) == text
            assert b.tokenize(text) == tok.encode(text, add_special_tokens=False).ids
        drafter = make_drafter("tasc-spec", load_table(bundle, "demo", b.tokenizer_hash))
        for row in load_task("demo").test[:3]:
            prompt = b.chat_prompt(row.prompt)
            cfg = GenerateConfig(24, 8, stop_tokens=b.stop_tokens)
            assert generate(b, prompt, drafter, cfg).tokens == generate(b, prompt, None, cfg).tokens


def test_sequential_recipe_expands_the_fine_tuned_model(hf, tmp_path):
    """README's recipe: plain ft -> expand that checkpoint -> ft again. The expansion must start
    from the fine-tuned weights (not the base), keep them for the old rows, and train again."""
    ft = run_train(TrainConfig(task="demo", out=str(tmp_path / "ft"), model=str(hf), steps=2,
                               batch_size=4, train_limit=20), log=QUIET)
    x = run_expand(ExpandConfig(task="demo", out=str(tmp_path / "x"), model=str(ft), budget=20,
                                per_round=10, min_count=3), log=QUIET)
    q = "model.layers.0.self_attn.q_proj.weight"
    base, tuned, grown = weights(hf), weights(ft), weights(x)
    assert not torch.equal(tuned[q], base[q])
    assert torch.equal(grown[q], tuned[q])  # the expanded model is the fine-tuned one
    n = json.loads((x / "expansion.json").read_text())["base_vocab"]
    assert grown["model.embed_tokens.weight"].shape[0] > n
    assert torch.equal(grown["model.embed_tokens.weight"][:n], tuned["model.embed_tokens.weight"][:n])
    ftx = run_train(TrainConfig(task="demo", out=str(tmp_path / "ftx"), model=str(x), steps=2,
                                batch_size=4, train_limit=20), log=QUIET)
    assert not torch.equal(weights(ftx)[q], grown[q])
