"""The hidden-state head drafter (tasc_edge/hidden_head.py) on real llama.cpp tiny models:
it reads the right row of the target's verify forward, output stays exactly plain greedy
(alone and chained), sampling follows the target, training on a tiny bundle learns, and a
head made for another model is refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from stats import chi_square_pvalue  # noqa: E402
from tasc_edge.cost import CostCurve  # noqa: E402
from tasc_edge.decode import GenerateConfig, generate  # noqa: E402
from tasc_edge.drafters import NgramDrafter  # noqa: E402
from tasc_edge.errors import TascError  # noqa: E402
from tasc_edge.hidden_head import HiddenHead, HiddenHeadDrafter  # noqa: E402
from tasc_edge.model_drafter import ChainedDrafter  # noqa: E402
from tasc_edge.ngram import NgramTable  # noqa: E402
from tasc_edge.runtime import llama_backend  # noqa: E402
from tasc_edge.verify import SamplingConfig  # noqa: E402
from tasc_edge.vocab_trim import choose_kept, token_counts  # noqa: E402
from tasc_edge.verify import target_probs  # noqa: E402
from test_decode_llama import exact_two_token_distribution, prompts  # noqa: E402
from tiny_gguf import write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("hh") / "t.gguf", seed=3)
    with llama_backend.LlamaCppBackend(path, n_ctx=256, n_threads=2) as b:
        b.path = path
        yield b


def refs(target, n=6):
    cfg = GenerateConfig(max_new_tokens=40, max_draft=8, stop_tokens=target.stop_tokens)
    ps = prompts(target, n)
    return cfg, ps, [generate(target, p, None, cfg).tokens for p in ps]


def mirror_head(target, kept) -> HiddenHead:
    """A head that gives back the target's own prediction from the hidden state it is handed
    (w_mix = 0, w_out = the target's head rows): fed the right row, it names the token that
    row produced, so it checks which row the drafter reads."""
    from tasc_edge.export.hidden_head import gguf_rows

    head_rows, embed_rows = gguf_rows(target.path, kept.ids)
    d, k = head_rows.shape[1], kept.k
    return HiddenHead(kept, np.zeros((8, 2 * d), np.float32), np.zeros(8, np.float32),
                      np.zeros((d, 8), np.float32), np.zeros((k + 1, d), np.float32), head_rows)


class CountingChained(ChainedDrafter):
    """Counts the drafts where the head's own chain was chosen."""

    chains = 0

    def _chain_then_ngrams(self, *args, known=None):
        self.chains += known is None  # a one-token gap fill passes the n-grams' draft after it
        return super()._chain_then_ngrams(*args, known=known)


def all_ids(target):
    counts = np.ones(target.n_vocab, dtype=np.int64)
    return choose_kept(counts, target.tokenizer_hash, "target", top_k=target.n_vocab)


def test_hidden_head_reads_the_row_that_produced_the_newest_token(target):
    pytest.importorskip("gguf")
    drafter = HiddenHeadDrafter(target, mirror_head(target, all_ids(target)), target.n_vocab)
    cfg, ps, outs = refs(target, 3)
    seen = hits = 0

    class Spy(HiddenHeadDrafter):
        def update(self, draft, n_accepted, committed):
            nonlocal seen, hits
            super().update(draft, n_accepted, committed)
            seen += 1
            hits += self.peek()[0] == committed[-1]

    spy = Spy(target, drafter.head, target.n_vocab)
    table = NgramTable.build([o for o in outs if len(o) >= 2], target.tokenizer_hash)
    for p, ref in zip(ps, outs):  # n-grams make multi-token verify rows, so the row index matters
        assert generate(target, p, ChainedDrafter(NgramDrafter(table), spy), cfg).tokens == ref
    assert seen > 20 and hits >= 0.9 * seen  # fp32 head vs llama.cpp's Q8_0 head: rare near-ties
    assert not target.keep_hidden or target.hidden is not None


@pytest.mark.parametrize("depth", [1, 3])
def test_hidden_head_drafts_stay_exact_alone_and_chained(target, depth):
    cfg, ps, outs = refs(target)
    kept = choose_kept(token_counts(outs, target.n_vocab), target.tokenizer_hash, "target",
                       coverage=1.0, always=target.stop_tokens)
    rng = np.random.default_rng(0)
    d = target.n_embd
    head = HiddenHead(kept, rng.standard_normal((16, 2 * d), dtype=np.float32),
                      np.zeros(16, np.float32), rng.standard_normal((d, 16), dtype=np.float32) * 0.1,
                      rng.standard_normal((kept.k + 1, d), dtype=np.float32),
                      rng.standard_normal((kept.k, d), dtype=np.float32), depth=depth)
    table = NgramTable.build([o for o in outs[:3] if len(o) >= 2], target.tokenizer_hash)
    # chained weighs its candidates by the loop's cost curve when it has one (a dear 4th row)
    curve = CostCurve((1.0, 1.1, 1.2, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5))
    for make, cost in ((lambda: HiddenHeadDrafter(target, head, target.n_vocab, min_survival=0.0), None),
                       (lambda: CountingChained(NgramDrafter(table), HiddenHeadDrafter(
                           target, head, target.n_vocab), ask_below=1.0), None),
                       (lambda: CountingChained(NgramDrafter(table), HiddenHeadDrafter(
                           target, head, target.n_vocab), ask_below=1.0, cost=curve), curve)):
        drafter, drafted, forwards = make(), 0, 0
        for p, ref in zip(ps, outs):
            g = generate(target, p, drafter, cfg, cost)
            assert g.tokens == ref
            drafted += g.stats.drafted
            forwards += g.stats.target_forwards
        assert drafted > 0 and drafter.steps > 0
        if depth > 1 and isinstance(drafter, HiddenHeadDrafter):  # it chained its own states
            assert drafted > forwards and drafter.steps > forwards
        if isinstance(drafter, CountingChained):  # a deep head's chain was chosen, never a shallow one's
            assert (drafter.chains > 0) == (depth > 1)
    target.keep_hidden = False


def random_head(target, rng, depth: int) -> HiddenHead:
    """A random head over every id: its proposals are often wrong, so rejections are exercised."""
    kept, d = all_ids(target), target.n_embd
    return HiddenHead(kept, rng.standard_normal((8, 2 * d), dtype=np.float32), np.zeros(8, np.float32),
                      rng.standard_normal((d, 8), dtype=np.float32) * 0.1, np.zeros((kept.k + 1, d), np.float32),
                      rng.standard_normal((kept.k, d), dtype=np.float32) * 0.2, depth=depth)


def three_token_outcomes(target, prompt, sampling):
    """The target's exact distribution over its next three tokens (each a dict key)."""
    first = exact_two_token_distribution(target, prompt, sampling)
    joint = {}
    for (t1, t2), p12 in first.items():
        target.prefill([*prompt, t1])
        p3 = target_probs(target.forward([t2])[0], sampling)
        for t3 in np.flatnonzero(p3):
            joint[(t1, t2, int(t3))] = p12 * p3[t3]
    keys = sorted(joint)
    return joint, keys, {k: i for i, k in enumerate(keys)}


@pytest.mark.parametrize("depth,cost", [(1, None), (2, None), (2, CostCurve((1.0, 1.0, 1.02)))])
def test_hidden_head_sampling_follows_target(target, depth, cost):
    """The first forward has no hidden state (plain); the second verifies up to two head
    tokens, the second drawn from the head's own state estimate at depth 2, and the cost
    curve cuts drafts by confidence: none of it may move output off the target distribution."""
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(target, 1)[0]
    joint, keys, index = three_token_outcomes(target, prompt, sampling)
    rng = np.random.default_rng(2)
    head = random_head(target, rng, depth)
    cfg = GenerateConfig(max_new_tokens=4, max_draft=2, sampling=sampling, stop_tokens=frozenset())
    lengths: set[int] = set()  # draft lengths of the second forward (room for two)

    class Spy(HiddenHeadDrafter):
        def begin(self, prompt):
            self.forwards = 0
            super().begin(prompt)

        def update(self, draft, n_accepted, committed):
            self.forwards += 1
            if self.forwards == 2:
                lengths.add(len(draft.tokens))
            super().update(draft, n_accepted, committed)

    drafter = Spy(target, head, target.n_vocab, SamplingConfig(temperature=1.0), seed=1, min_survival=0.0)
    counts = np.zeros(len(keys))
    for _ in range(3000):
        key = tuple(generate(target, prompt, drafter, cfg, cost, rng=rng).tokens[:3])
        assert key in index, f"sampled {key}, which the target gives probability 0"
        counts[index[key]] += 1
    assert drafter.steps > 0 and max(lengths) == depth  # depth 2 verified two head tokens at a time
    if cost is not None:  # and the cost curve cut some of those drafts to one token, by confidence
        assert lengths >= {1, 2}
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3
    target.keep_hidden = False


def test_chained_deep_head_sampling_follows_target(target):
    """Chained behind n-grams, a depth-2 head's whole chain is chosen (on its argmax chain)
    where the n-grams have less to offer, then drawn and followed by n-gram tokens: the first
    three tokens still follow the target exactly."""
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(target, 1)[0]
    joint, keys, index = three_token_outcomes(target, prompt, sampling)
    rng = np.random.default_rng(4)
    head = random_head(target, rng, depth=2)
    # n-grams over random text: they sometimes match, mostly not
    noise = [rng.integers(0, target.n_vocab, 60).tolist() for _ in range(20)]
    table = NgramTable.build(noise, target.tokenizer_hash)
    drafter = CountingChained(NgramDrafter(table), HiddenHeadDrafter(
        target, head, target.n_vocab, SamplingConfig(temperature=1.0), seed=3, min_survival=0.0), ask_below=1.0)
    cfg = GenerateConfig(max_new_tokens=5, max_draft=3, sampling=sampling, stop_tokens=frozenset())
    counts = np.zeros(len(keys))
    for _ in range(3000):
        key = tuple(generate(target, prompt, drafter, cfg, rng=rng).tokens[:3])
        assert key in index, f"sampled {key}, which the target gives probability 0"
        counts[index[key]] += 1
    assert drafter.chains > 1000
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3
    target.keep_hidden = False


def test_hidden_head_of_another_width_is_refused(target):
    kept = all_ids(target)
    d = target.n_embd * 2
    head = HiddenHead(kept, np.zeros((4, 2 * d), np.float32), np.zeros(4, np.float32),
                      np.zeros((d, 4), np.float32), np.zeros((kept.k + 1, d), np.float32),
                      np.zeros((kept.k, d), np.float32))
    with pytest.raises(TascError, match="trained for another model"):
        HiddenHeadDrafter(target, head, target.n_vocab)
    with pytest.raises(TascError, match="do not fit"):
        HiddenHead(kept, head.w_in, head.b_in, head.w_mix, head.embed[:-1], head.w_out)


def test_head_examples_are_labelled_by_the_target_not_the_text(target):
    """Along a greedy generation every row is an example labelled with the next token; along
    a text that leaves the target's path, the row whose token the target would not have
    chosen is dropped, and labels stay the target's argmax, not the text's next token."""
    from tasc_edge.export.hidden_head import collect_examples

    _, ps, outs = refs(target, 2)
    prompt, gen = next((p, o) for p, o in zip(ps, outs) if len(o) >= 8)
    ex = collect_examples(target, [(prompt, gen)], log=lambda *_: None)
    assert len(ex.label) == len(gen) - 1  # batched vs incremental forward: same greedy path here
    assert ex.token.tolist() == gen[:-1] and ex.label.tolist() == gen[1:] and ex.generated.all()

    off = (gen[3] + 1) % target.n_vocab  # a token the target did not choose at row 3
    text = gen[:3] + [off] + gen[4:]
    ex2 = collect_examples(target, [(prompt, gen), (prompt, text)], log=lambda *_: None, n_generated=1)
    mine = ex2.sequence == 1
    assert not ex2.generated[mine].any() and ex2.generated[~mine].all()
    rows = ex2.token[mine].tolist()
    assert rows[:3] == gen[:3] and len(rows) <= len(text) - 2  # rows 0-2 kept, row 3 dropped
    assert ex2.label[mine][:3].tolist() == gen[1:4]  # row 2 read gen[2]: the target's gen[3]


# -- export: trained on the target's own generations, in a bundle ------------------------------
@pytest.fixture(scope="module", params=["gguf", "onnx"])
def head_bundle(request, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("gguf" if request.param == "gguf" else "onnxruntime")
    from tasc_edge.export.bundle import ExportBundleConfig, export_bundle
    from tasc_edge.export.tables import ExportTablesConfig
    from tiny_hf import write_tiny_hf

    root = tmp_path_factory.mktemp(f"hhb-{request.param}")
    # llama.cpp reads a tiny GGUF; the ONNX exporter a tiny HF checkpoint
    model = write_tiny_gguf(root / "t.gguf", seed=5) if request.param == "gguf" else write_tiny_hf(root / "hf")
    tables = ExportTablesConfig(task="", out="", corpus="both", n_ctx=1024, train_limit=40, max_new_tokens=32)
    cfg = ExportBundleConfig(tasks=["demo"], out=str(root / "b"), model=str(model), format=request.param,
                             gguf_quant="as-is", onnx_quant="int8", tables=tables, hidden_head=64,
                             hidden_head_steps=300, hidden_head_refs=20 if request.param == "onnx" else 0,
                             hidden_head_depths=(1, 2))
    export_bundle(cfg, log=lambda *_: None)
    return root / "b", cfg


def test_exported_hidden_head_learns_and_stays_exact(head_bundle):
    from tasc_edge.runtime.bundle import load_bundle
    from test_vocabtrim_bundle import assert_drafters_exact

    path, cfg = head_bundle
    entry = load_bundle(path).manifest["drafters"]["head-k64"]
    assert entry["kind"] == "hidden-head" and entry["k"] >= 64 and entry["layers"] == 0
    # one evaluation reads the head's matrices and one embedding row, not the whole file
    assert 0 < entry["step_bytes"] < (path / entry["dir"] / "head.npz").stat().st_size
    train = entry["train"]
    assert train["examples"] > 256 and train["holdout_top1"] > train["holdout_top1_before"]
    assert train["reference_sequences"] == (20 if cfg.hidden_head_refs else 0)
    # the depth-2 head: trained on the same states, its second step learned something too
    deep = load_bundle(path).manifest["drafters"]["head-k64-d2"]
    assert deep["depth"] == 2 and deep["k"] == entry["k"] and deep["train"]["depth"] == 2
    # (the tiny ONNX model's held-out second steps are too few to judge: train rows here)
    assert deep["train"]["holdout_top1"] > train["holdout_top1_before"]
    assert deep["train"]["train_top1_by_step"][1] > 0.5
    assert_drafters_exact(path, ("head-k64", "head-k64-d2"))


def test_hidden_head_export_is_resumed_not_redone(head_bundle):
    from tasc_edge.export.bundle import export_bundle

    path, cfg = head_bundle
    head = path / "drafter" / "head-k64" / "head.npz"
    before = head.stat().st_mtime_ns
    lines: list[str] = []
    export_bundle(cfg, log=lines.append)
    assert head.stat().st_mtime_ns == before
    assert not any("hidden head step" in line for line in lines)


def test_new_head_depth_reuses_the_collected_hidden_states(head_bundle):
    from dataclasses import replace

    from tasc_edge.export.bundle import export_bundle
    from tasc_edge.runtime.bundle import load_bundle

    path, cfg = head_bundle
    lines: list[str] = []
    export_bundle(replace(cfg, hidden_head_depths=(1, 2, 3)), log=lines.append)
    assert any("collected before" in line for line in lines)  # read back, not re-run
    assert any("hidden head step" in line for line in lines)  # the depth-3 head was trained
    drafters = load_bundle(path).manifest["drafters"]
    assert {"head-k64", "head-k64-d2", "head-k64-d3"} <= set(drafters)


def test_bench_takes_c_from_the_loaded_head_not_a_stale_manifest(head_bundle, tmp_path):
    """A bundle exported before the head's step got cheaper records more bytes per step than
    the head now reads; MBSU's c must come from the loaded head."""
    import json
    import shutil

    from tasc_edge.runtime.bench import BenchConfig, run_bench
    from tasc_edge.runtime.bundle import load_bundle, write_manifest
    from tasc_edge.vocab_trim import KeptVocab
    from test_bundle import demo_data_root

    path, _ = head_bundle
    old = tmp_path / "old-bundle"
    shutil.copytree(path, old)
    manifest = load_bundle(old).manifest
    entry = manifest["drafters"]["head-k64"]
    folder = old / entry["dir"]
    live = HiddenHead.load(folder / "head.npz", KeptVocab.load(folder / "kept.npz")).step_bytes()
    entry["step_bytes"] = 2 * live  # what an older export wrote down
    entry["c"] = entry["step_bytes"] / entry["target_step_bytes"]
    write_manifest(old, manifest)

    cfg = BenchConfig(datasets=["demo"], data_root=str(demo_data_root(tmp_path)), limit=1, max_new_tokens=16,
                      methods=["plain", "chained:head-k64"], n_ctx=1024, threads=2, bundle=str(old),
                      out=str(tmp_path / "out"))
    report = run_bench(cfg, log=lambda *_: None)
    want = live / entry["target_step_bytes"]
    assert report["drafter_c"]["head-k64"] == pytest.approx(want)
    assert report["drafters"]["head-k64"]["c"] == pytest.approx(2 * want)  # the manifest, as exported
    row = next(r for r in report["results"] if r["method"] == "chained:head-k64")
    assert row["c"] == pytest.approx(want) and row["identical_rows"] == 1
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["drafter_c"] == report["drafter_c"]
