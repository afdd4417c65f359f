"""Fuzzed exactness (hypothesis) on tiny real models: llama.cpp (GGUF) and onnxruntime (ONNX).

A scripted drafter proposes, step after step, drafts drawn by hypothesis: right, wrong,
partly right, empty, over-long, ending in a stop token, holding an id outside the vocabulary
(or negative), with confidences of the wrong length. Before each generation the backend is
left in a random state (prefills, forwards, rollbacks), and each generation draws its gamma,
token budget and stop tokens. Greedy output must equal plain greedy output (computed once per
prompt; a stop set or budget only truncates it). Sampling: random target and draft
distributions through `verify_sampling` must give the target's distribution (chi-square).

CI runs a fixed, derandomized set (`FUZZ_CI` cases per test); `pytest --fuzz-long tests/
test_fuzz.py` runs 10,000 random cases per greedy test and 2,000 sampling cases, outside CI. Cases run are counted and
printed in pytest's summary.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stats import chi_square_pvalue  # noqa: E402
from tasc_edge.decode import Draft, GenerateConfig, generate  # noqa: E402
from tasc_edge.verify import SamplingConfig, target_probs, verify_sampling  # noqa: E402
from tiny_gguf import write_tiny_gguf  # noqa: E402

FUZZ_CI = 60
KINDS = ("right", "wrong", "partial", "empty", "overlong", "stop", "out_of_range", "negative")
ACTION = st.tuples(st.sampled_from(KINDS), st.integers(0, 20), st.integers(0, 1 << 30),
                   st.integers(-2, 2))  # kind, length, noise seed, confidence length skew
BACKEND_OP = st.tuples(st.sampled_from(("prefill", "forward", "rollback")), st.integers(0, 40))


def fuzz_settings(request_long: bool, long_examples: int = 10_000) -> settings:
    if request_long:
        return settings(max_examples=long_examples, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))
    return settings(max_examples=FUZZ_CI, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


class ScriptedDrafter:
    """Drafts by script against the known plain continuation `truth` (prompt + output)."""

    def __init__(self, truth: list[int], actions: list[tuple], n_vocab: int, stop: int):
        self.truth, self.actions, self.n_vocab, self.stop = truth, actions, n_vocab, stop
        self.pos, self.calls = 0, 0

    def begin(self, prompt):
        self.pos = len(prompt)

    def draft(self, max_tokens):
        kind, length, seed, skew = self.actions[self.calls % len(self.actions)]
        self.calls += 1
        rng = np.random.default_rng(seed)
        right = self.truth[self.pos:self.pos + length]
        wrong = [int(t) for t in rng.integers(0, self.n_vocab, size=length)]
        cut = int(rng.integers(0, length + 1))
        tokens = {
            "right": right, "wrong": wrong, "partial": right[:cut] + wrong[cut:], "empty": [],
            "overlong": self.truth[self.pos:self.pos + max_tokens + 1 + length] + wrong,
            "stop": right[:cut] + [self.stop], "out_of_range": right[:cut] + [self.n_vocab + seed % 1000],
            "negative": right[:cut] + [-1 - seed % 5],
        }[kind]
        conf = list(rng.random(max(0, len(tokens) + skew)))
        return Draft(tokens, conf)

    def update(self, draft, n_accepted, committed):
        self.pos += len(committed)


def shake(backend, ops, vocab: int, rng) -> None:
    """Leave the backend's cache in some arbitrary state before a generation."""
    cached = 0
    for op, n in ops:
        if op == "prefill":
            backend.prefill([int(t) for t in rng.integers(0, vocab, size=n + 1)])
            cached = n + 1
        elif op == "forward" and cached + n + 1 < backend.n_ctx:
            backend.forward([int(t) for t in rng.integers(0, vocab, size=(n % 8) + 1)])
            cached += (n % 8) + 1
        elif op == "rollback" and cached:
            k = n % (cached + 1)
            backend.rollback(k)
            cached -= k


def reference(backend, prompts, n: int = 48) -> list[list[int]]:
    cfg = GenerateConfig(max_new_tokens=n, stop_tokens=frozenset())
    return [list(p) + generate(backend, p, None, cfg).tokens for p in prompts]


def expected(truth: list[int], n_prompt: int, max_new: int, stops: frozenset[int]) -> list[int]:
    out = []
    for t in truth[n_prompt:n_prompt + max_new]:
        if t in stops:
            break
        out.append(t)
    return out


def check_greedy(name, backend, prompts, truths, data, counts: dict) -> None:
    i = data.draw(st.integers(0, len(prompts) - 1), label="prompt")
    prompt, truth = prompts[i], truths[i]
    actions = data.draw(st.lists(ACTION, min_size=1, max_size=12), label="drafts")
    ops = data.draw(st.lists(BACKEND_OP, max_size=6), label="backend ops")
    max_new = data.draw(st.integers(1, 40), label="max_new_tokens")
    gamma = data.draw(st.integers(0, 16), label="max_draft")
    out_tokens = truth[len(prompt):]
    stop_picks = data.draw(st.lists(st.integers(0, len(out_tokens) - 1), max_size=2), label="stops")
    stops = frozenset(out_tokens[j] for j in stop_picks)
    shake(backend, ops, backend.n_vocab, np.random.default_rng(len(actions)))
    drafter = ScriptedDrafter(truth, actions, backend.n_vocab, stop=next(iter(stops), out_tokens[0]))
    g = generate(backend, prompt, drafter, GenerateConfig(max_new, gamma, stop_tokens=stops))
    assert g.tokens == expected(truth, len(prompt), max_new, stops)
    counts[name] = counts.get(name, 0) + 1


def fuzz_prompts(backend) -> list[list[int]]:
    words = ["the", "large", "coffee", "order", "milk", "json", "two", "hello", "size", "drink"]
    rng = np.random.default_rng(5)
    return [backend.chat_prompt(" ".join(rng.choice(words, size=rng.integers(1, 10)))) for _ in range(4)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from tasc_edge.runtime.llama_backend import LlamaCppBackend

    pytest.importorskip("llama_cpp")
    path = write_tiny_gguf(tmp_path_factory.mktemp("fuzz") / "tiny.gguf", seed=9)
    with LlamaCppBackend(path, n_ctx=512, n_threads=1) as b:
        prompts = fuzz_prompts(b)
        yield b, prompts, reference(b, prompts)


@pytest.fixture(scope="module")
def onnx(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("optimum.exporters.onnx")
    from tasc_edge.export.bundle import ExportBundleConfig, export_bundle
    from tasc_edge.export.tables import ExportTablesConfig
    from tasc_edge.runtime.bundle import load_bundle, open_backend
    from tiny_hf import write_tiny_hf

    root = tmp_path_factory.mktemp("fuzz-onnx")
    hf = write_tiny_hf(root / "hf")
    tables = ExportTablesConfig(task="", out="", corpus="reference", n_ctx=1024)
    export_bundle(ExportBundleConfig(tasks=["demo"], out=str(root / "b"), model=str(hf), format="onnx",
                                     onnx_quant="int4", tables=tables), log=lambda *_: None)
    with open_backend(load_bundle(root / "b"), n_ctx=512, n_threads=1) as b:
        prompts = fuzz_prompts(b)
        yield b, prompts, reference(b, prompts)


@pytest.mark.parametrize("backend", ["llama", "onnx"])
def test_fuzz_greedy(backend, request, pytestconfig):
    b, prompts, truths = request.getfixturevalue(backend)
    name = {"llama": "greedy llama.cpp", "onnx": "greedy onnxruntime"}[backend]

    @fuzz_settings(pytestconfig.getoption("--fuzz-long"))
    @given(st.data())
    def run(data):
        check_greedy(name, b, prompts, truths, data, pytestconfig.fuzz_counts)

    run()


def test_fuzz_sampling_follows_the_target(pytestconfig):
    # 4,000 draws per case: the long profile runs 2,000 cases here (~4 min), 10,000 per greedy test
    @fuzz_settings(pytestconfig.getoption("--fuzz-long"), long_examples=2_000)
    @given(st.integers(0, 1 << 30), st.integers(0, 3), st.booleans(), st.sampled_from([0.7, 1.0, 1.6]),
           st.integers(0, 4))
    def run(seed, n_draft, with_probs, temperature, top_k):
        rng = np.random.default_rng(seed)
        vocab = 6
        logits = rng.normal(0, 2, size=(n_draft + 1, vocab))
        cfg = SamplingConfig(temperature=temperature, top_k=top_k)
        p0 = target_probs(logits[0], cfg)
        q = rng.dirichlet(np.ones(vocab) * 0.5, size=n_draft) if with_probs else None
        counts = np.zeros(vocab)
        for _ in range(4000):  # the first committed token: an accepted draft or the resample
            if q is not None:
                draft = [int(rng.choice(vocab, p=q[i])) for i in range(n_draft)]
            else:
                draft = [int(t) for t in rng.integers(0, vocab + 1, size=n_draft)]  # may be out of range
            n_acc, nxt = verify_sampling(draft, q, logits, cfg, rng)
            counts[draft[0] if n_acc >= 1 else nxt] += 1
        assert chi_square_pvalue(counts, p0) > 1e-6
        counts = pytestconfig.fuzz_counts
        counts["sampling"] = counts.get("sampling", 0) + 1

    run()
