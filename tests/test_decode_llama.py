"""Exactness of the decode loop on real llama.cpp with a tiny random-weight GGUF.

Greedy: speculative output == plain greedy output token for token, for drafters that are
always right, always wrong, partly right, random, over-long, n-gram based, and under stop,
max-token and context limits. Sampling: the committed tokens follow the target distribution
(chi-square against the exact two-token joint distribution computed from the model's logits).
"""

from __future__ import annotations

import numpy as np
import pytest

from stats import chi_square_pvalue
from tasc_edge.cost import CostCurve, measure_cost_curve
from tasc_edge.decode import Draft, GenerateConfig, batch_invariant, generate
from tasc_edge.drafters import NgramDrafter
from tasc_edge.errors import TascError
from tasc_edge.ngram import NgramTable
from tasc_edge.verify import SamplingConfig, target_probs
from tiny_gguf import write_tiny_gguf

llama_backend = pytest.importorskip("tasc_edge.runtime.llama_backend")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", seed=3)
    with llama_backend.LlamaCppBackend(path, n_ctx=256, n_threads=2) as b:
        yield b


class OracleDrafter:
    """Knows the plain greedy continuation; corrupts each draft token with probability
    `error_rate`, drafts `length` tokens (possibly past the end of the reference)."""

    def __init__(self, reference: list[int], error_rate: float, length: int, n_vocab: int, seed: int):
        self.reference, self.error_rate, self.length, self.n_vocab = reference, error_rate, length, n_vocab
        self.rng = np.random.default_rng(seed)
        self.pos = 0

    def begin(self, prompt):
        self.pos = 0

    def draft(self, max_tokens):
        toks = []
        for j in range(min(self.length, max_tokens)):
            i = self.pos + j
            right = self.reference[i] if i < len(self.reference) else int(self.rng.integers(self.n_vocab))
            toks.append(int(self.rng.integers(self.n_vocab)) if self.rng.random() < self.error_rate else right)
        return Draft(toks, [0.9] * len(toks))

    def update(self, draft, n_accepted, committed):
        self.pos += len(committed)


def prompts(backend, n=12):
    rng = np.random.default_rng(7)
    words = ["the", "large", "coffee", "order", "milk", "json", "two", "hello", "size", "drink"]
    return [backend.chat_prompt(" ".join(rng.choice(words, size=rng.integers(1, 12))))
            for _ in range(n)]


def plain(backend, prompt, cfg):
    return generate(backend, prompt, None, cfg).tokens


@pytest.mark.parametrize("error_rate,length", [(0.0, 4), (0.0, 16), (1.0, 3), (0.3, 6), (0.6, 12)])
def test_greedy_spec_equals_plain_with_oracle_drafts(backend, error_rate, length):
    cfg = GenerateConfig(max_new_tokens=48, max_draft=16, stop_tokens=backend.stop_tokens)
    for i, prompt in enumerate(prompts(backend)):
        ref = plain(backend, prompt, cfg)
        drafter = OracleDrafter(ref, error_rate, length, backend.n_vocab, seed=i)
        got = generate(backend, prompt, drafter, cfg)
        assert got.tokens == ref, f"prompt {i}: diverged at {next((j for j, (a, b) in enumerate(zip(got.tokens, ref)) if a != b), None)}"
        if error_rate == 0.0 and len(ref) > 8:
            assert got.stats.target_forwards < len(ref)  # right drafts really were accepted
        if error_rate == 1.0:
            assert got.stats.accepted <= got.stats.drafted * 0.05 + 1


def test_greedy_spec_equals_plain_with_ngram_drafters(backend):
    cfg = GenerateConfig(max_new_tokens=64, max_draft=10, stop_tokens=backend.stop_tokens)
    ps = prompts(backend, 16)
    refs = [plain(backend, p, cfg) for p in ps]
    # a task table built from the model's own outputs on half the prompts: many right drafts
    table = NgramTable.build([r + [2] for r in refs[:8] if len(r) >= 2], backend.tokenizer_hash)
    for drafter in (NgramDrafter(None), NgramDrafter(table)):
        for curve in (None, CostCurve((1.0, 1.6, 2.0, 2.3, 2.6, 2.9, 3.2, 3.5, 3.8, 4.1, 4.4))):
            total_acc = 0
            for p, ref in zip(ps, refs):
                got = generate(backend, p, drafter, cfg, curve)
                assert got.tokens == ref
                total_acc += got.stats.accepted
            if drafter.task is not None and curve is None:
                assert total_acc > 0


def test_max_tokens_and_stop_tokens(backend):
    p = prompts(backend, 1)[0]
    long_cfg = GenerateConfig(max_new_tokens=40, stop_tokens=frozenset())
    ref = plain(backend, p, long_cfg)
    for n in (1, 2, 7):
        cfg = GenerateConfig(max_new_tokens=n, stop_tokens=frozenset())
        g = generate(backend, p, OracleDrafter(ref, 0.0, 8, backend.n_vocab, 0), cfg)
        assert g.tokens == ref[:n] and g.finish_reason == "length"
    # make the 5th generated token a stop token: output ends before it, drafted or not
    stop = ref[4]
    cfg = GenerateConfig(max_new_tokens=40, stop_tokens=frozenset({stop}))
    want = ref[: ref.index(stop)]
    for drafter in (None, OracleDrafter(ref, 0.0, 8, backend.n_vocab, 0)):
        g = generate(backend, p, drafter, cfg)
        assert g.tokens == want and g.finish_reason == "stop"


def test_context_limit_is_respected(backend):
    p = prompts(backend, 1)[0]
    cfg = GenerateConfig(max_new_tokens=10_000, stop_tokens=frozenset())
    ref = plain(backend, p, cfg)
    assert len(p) + len(ref) == backend.n_ctx + 1  # every slot used; last token never evaluated
    g = generate(backend, p, OracleDrafter(ref, 0.2, 12, backend.n_vocab, 1), cfg)
    assert g.tokens == ref and g.finish_reason == "context"


def test_prompt_longer_than_context(backend):
    with pytest.raises(TascError, match="raise --n-ctx"):
        generate(backend, [5] * (backend.n_ctx + 3), None, GenerateConfig())


def test_rollback_restores_exact_logits(backend):
    p = prompts(backend, 1)[0]
    backend.prefill(p)
    first = backend.forward([7])
    backend.rollback(1)
    backend.forward([9, 10, 11])
    backend.rollback(3)
    again = backend.forward([7])
    assert np.array_equal(first, again)


def test_batched_rows_equal_one_token_rows(backend):
    """Flash attention + quantized weights: a k-token forward reproduces k one-token forwards."""
    assert batch_invariant(backend, prompts(backend, 1)[0], [30, 31, 40, 50, 60])


def test_batch_invariance_check_catches_f32_weights(tmp_path):
    """The check that guards exactness can fail: F32 weights batch through another kernel."""
    path = write_tiny_gguf(tmp_path / "f32.gguf", seed=3, qtype="F32")
    with llama_backend.LlamaCppBackend(path, n_ctx=128, n_threads=2) as b:
        assert not batch_invariant(b, b.chat_prompt("the large coffee"), [30, 31, 40, 50, 60])


def test_cost_curve_measures_real_forwards(backend):
    curve = measure_cost_curve(backend, max_k=8, position=32, repeats=2)
    assert len(curve.ratios) == 8 and curve.ratios[0] == 1.0
    assert all(r > 0 for r in curve.ratios)  # as measured: llama.cpp's 4-row tiles make it a sawtooth
    assert curve.step_seconds > 0


def exact_two_token_distribution(backend, prompt, cfg):
    backend.prefill(prompt[:-1])
    p1 = target_probs(backend.forward([prompt[-1]])[0], cfg)
    joint = {}
    for t1 in np.flatnonzero(p1):
        p2 = target_probs(backend.forward([int(t1)])[0], cfg)
        backend.rollback(1)
        for t2 in np.flatnonzero(p2):
            joint[(int(t1), int(t2))] = p1[t1] * p2[t2]
    return joint


@pytest.mark.parametrize("error_rate", [0.0, 0.5, 1.0])
def test_sampling_follows_target_distribution(backend, error_rate):
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(backend, 1)[0]
    joint = exact_two_token_distribution(backend, prompt, sampling)
    keys = sorted(joint)
    index = {k: i for i, k in enumerate(keys)}
    cfg = GenerateConfig(max_new_tokens=2, max_draft=2, sampling=sampling, stop_tokens=frozenset())
    rng = np.random.default_rng(11)
    greedy_ref = plain(backend, prompt, GenerateConfig(max_new_tokens=2, stop_tokens=frozenset()))
    counts = np.zeros(len(keys))
    for i in range(3000):
        drafter = OracleDrafter(greedy_ref, error_rate, 2, backend.n_vocab, seed=i)
        g = generate(backend, prompt, drafter, cfg, rng=rng)
        key = tuple(g.tokens)
        assert key in index, f"sampled {key}, which the target gives probability 0"
        counts[index[key]] += 1
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3


@pytest.fixture(scope="module")
def long_backend(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("long") / "tiny.gguf", seed=4, n_ctx=2048)
    with llama_backend.LlamaCppBackend(path, n_ctx=1024, n_threads=2) as b:
        yield b


def long_prompt(b, n=130):
    rng = np.random.default_rng(0)
    words = ["the", "large", "coffee", "order", "milk", "json", "two", "hello", "size", "drink"]
    ids = b.chat_prompt(" ".join(rng.choice(words, size=n)))
    assert len(ids) > 620
    return ids


def test_f16_kv_cache_breaks_batch_invariance_past_512_cells(tmp_path):
    """llama.cpp's CPU flash attention takes a split-KV path for one query over >= 512 F16 KV
    cells; batches take another. The probe must catch it; a Q8_0 K cache (V Q8_0 or F16) must
    not show it."""
    path = write_tiny_gguf(tmp_path / "t.gguf", seed=4, n_ctx=2048)
    for kv, expect in (("f16", False), ("q8_0", True), ("q8_0/f16", True)):
        with llama_backend.LlamaCppBackend(path, n_ctx=1024, n_threads=2, kv_type=kv) as b:
            ids = long_prompt(b)
            assert batch_invariant(b, ids[:16], ids[16:20])  # short contexts: fine either way
            assert batch_invariant(b, ids[:600], ids[600:604]) is expect


def test_greedy_spec_equals_plain_past_512_tokens(long_backend):
    b = long_backend
    prompt = long_prompt(b)
    cfg = GenerateConfig(max_new_tokens=80, max_draft=12, stop_tokens=frozenset())
    ref = plain(b, prompt, cfg)
    assert len(prompt) + len(ref) > 600
    for error_rate, length in ((0.0, 12), (0.3, 6), (1.0, 4)):
        got = generate(b, prompt, OracleDrafter(ref, error_rate, length, b.n_vocab, seed=1), cfg)
        assert got.tokens == ref
    got = generate(b, prompt, NgramDrafter(NgramTable.build([ref + [2]], b.tokenizer_hash)), cfg)
    assert got.tokens == ref and got.stats.accepted > 0


def test_prompt_prefix_reuse_is_exact(tmp_path):
    """Two prompts sharing a long prefix: the second, decoded over the first one's cached
    prefix, gives the tokens a cold cache gives (the cache keeps only the common prefix)."""
    path = write_tiny_gguf(tmp_path / "t.gguf", seed=5, n_ctx=2048)
    cfg = GenerateConfig(max_new_tokens=40, max_draft=8, stop_tokens=frozenset())
    with llama_backend.LlamaCppBackend(path, n_ctx=1024, n_threads=2, reuse_prefix=False) as cold:
        base = long_prompt(cold)
        first, second = base + cold.tokenize(" milk"), base + cold.tokenize(" json two")
        want = plain(cold, second, cfg)
        assert cold.reused_tokens == 0
    with llama_backend.LlamaCppBackend(path, n_ctx=1024, n_threads=2) as warm:
        plain(warm, first, cfg)
        assert generate(warm, second, None, cfg).tokens == want
        assert warm.reused_tokens >= len(base)  # the shared part really came from the cache
        ref_table = NgramTable.build([want + [2]], warm.tokenizer_hash)
        assert generate(warm, second, NgramDrafter(ref_table), cfg).tokens == want
        assert warm.reused_tokens == len(second) - 1  # same prompt again: nothing re-decoded


def test_amx_build_loads_without_extra_buffer_types_and_stays_exact(tmp_path, monkeypatch, capsys):
    """A llama.cpp built with AMX kernels segfaults in ggml_backend_amx_mul_mat on the first
    decode on AMX CPUs (llama.cpp #20824; seen on this project's CI machines), so open_llama
    loads such a build with llama.cpp's extra buffer types off. Here the real library is told
    it has AMX: the model must load with use_extra_bufts cleared for that call only, and
    batched verification must still be bit-exact."""
    import sys

    import llama_cpp

    module = sys.modules["llama_cpp.llama_cpp"]
    default = module.llama_model_default_params
    seen = []

    class Recording(llama_cpp.Llama):
        def __init__(self, **kwargs):
            seen.append(module.llama_model_default_params().use_extra_bufts)
            super().__init__(**kwargs)

    assert llama_backend.has_amx("CPU : AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1")
    assert not llama_backend.has_amx("CPU : AVX2 = 1 | AVX512 = 1 | REPACK = 1")
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AMX_INT8 = 1 |")
    monkeypatch.setattr(llama_cpp, "Llama", Recording)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3)
    with llama_backend.LlamaCppBackend(path, n_ctx=256, n_threads=2) as b:
        assert seen == [False]
        assert module.llama_model_default_params is default and default().use_extra_bufts
        p = b.tokenize("the large coffee order")
        assert batch_invariant(b, p, p[:5])
    assert "AMX" in capsys.readouterr().err


def test_pure_quant_puts_the_head_in_the_same_type(tmp_path, monkeypatch):
    """q4_0 keeps the output head at a higher precision (Q8_0; a tied model's token embedding
    is its head); q4_0-pure does not: on a 262k-vocabulary model that head is most of a step."""
    import gguf

    from tasc_edge.runtime.models import resolve_model

    monkeypatch.setenv("TASC_EDGE_CACHE", str(tmp_path / "cache"))
    src = write_tiny_gguf(tmp_path / "tiny.gguf", seed=5, n_embd=128, n_ff=256)

    def types(path) -> dict[str, str]:
        return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}

    plain, pure = types(resolve_model(str(src), "q4_0")), types(resolve_model(str(src), "q4_0-pure"))
    assert plain["output.weight"] == "Q8_0" and plain["blk.0.ffn_up.weight"] == "Q4_0"
    assert {t for n, t in pure.items() if n.endswith(".weight") and "norm" not in n} == {"Q4_0"}
    with pytest.raises(TascError, match="q4_0-pure"):
        resolve_model(str(src), "q3_pure")
