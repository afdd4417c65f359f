"""VocabTrim: kept-vocabulary choice, and the model drafter (trimmed or not, alone or chained)
driving real llama.cpp: greedy output equals plain greedy, sampling follows the target."""

from __future__ import annotations

import numpy as np
import pytest

from stats import chi_square_pvalue
from tasc_edge.cost import CostCurve
from tasc_edge.decode import Draft, GenerateConfig, generate
from tasc_edge.drafters import NgramDrafter
from tasc_edge.errors import TascError
from tasc_edge.model_drafter import ChainedDrafter, ModelDrafter, ModelDraftConfig
from tasc_edge.ngram import NgramTable
from tasc_edge.verify import SamplingConfig
from tasc_edge.vocab_trim import KeptVocab, choose_kept, token_counts
from test_decode_llama import exact_two_token_distribution, prompts
from tiny_gguf import write_tiny_gguf

llama_backend = pytest.importorskip("tasc_edge.runtime.llama_backend")


def two_token_outcomes(target, prompt, sampling):
    """The target's exact distribution over its next two tokens, its outcomes in a fixed
    order, and each outcome's index (for counting samples against it)."""
    joint = exact_two_token_distribution(target, prompt, sampling)
    keys = sorted(joint)
    return joint, keys, {k: i for i, k in enumerate(keys)}


# -- kept vocabulary ----------------------------------------------------------------------------
def test_choose_kept_by_top_k_and_coverage_keeps_stop_tokens():
    counts = np.array([0, 50, 30, 10, 5, 5, 0, 0])
    kept = choose_kept(counts, "h", "target", top_k=2, always=[7])
    assert kept.ids.tolist() == [1, 2, 7]  # top two plus the stop token nobody emitted
    assert kept.coverage == pytest.approx(80 / 100)
    kept = choose_kept(counts, "h", "target", coverage=0.9)
    assert kept.ids.tolist() == [1, 2, 3] and kept.coverage == pytest.approx(0.9)
    assert choose_kept(counts, "h", "raw", coverage=1.0).ids.tolist() == [1, 2, 3, 4, 5]
    local = kept.to_local()
    assert local[2] == 1 and local[6] == -1 and kept.to_target(2) == 3


def test_choose_kept_rejects_bad_input():
    with pytest.raises(TascError, match="empty calibration"):
        choose_kept(np.zeros(5, dtype=np.int64), "h", "target", top_k=2)
    with pytest.raises(TascError, match="exactly one"):
        choose_kept(np.ones(5, dtype=np.int64), "h", "target")
    with pytest.raises(TascError, match="calibration source"):
        choose_kept(np.ones(5, dtype=np.int64), "h", "nonsense", top_k=1)
    with pytest.raises(TascError, match="another tokenizer"):
        token_counts([[1, 2, 9]], n_vocab=5)


def test_kept_vocab_round_trip_and_tokenizer_check(tmp_path):
    kept = choose_kept(np.array([3, 1, 4, 1, 5]), "abc", "reference", top_k=3)
    kept.save(tmp_path / "kept.npz")
    back = KeptVocab.load(tmp_path / "kept.npz", "abc")
    assert back.ids.tolist() == kept.ids.tolist() and back.calib == "reference"
    with pytest.raises(TascError, match="re-export the drafter"):
        KeptVocab.load(tmp_path / "kept.npz", "other")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(TascError, match="not a readable"):
        KeptVocab.load(tmp_path / "bad.npz")


# -- the drafter on a real model ----------------------------------------------------------------
class TrimmedLogits:
    """A llama.cpp drafter whose logits keep only `ids` (what a trimmed head computes)."""

    def __init__(self, backend, ids: np.ndarray) -> None:
        self.b, self.ids = backend, ids
        self.n_ctx, self.n_vocab = backend.n_ctx, len(ids)

    def prefill(self, tokens):
        self.b.prefill(tokens)

    def forward(self, tokens):
        return self.b.forward(tokens)[:, self.ids]

    def rollback(self, n):
        self.b.rollback(n)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vt")
    target = llama_backend.LlamaCppBackend(write_tiny_gguf(folder / "t.gguf", seed=3), n_ctx=256, n_threads=2)
    # the drafter: the same weights in a second context (a perfect drafter before trimming),
    # and an unrelated random model (a bad one)
    same = llama_backend.LlamaCppBackend(folder / "t.gguf", n_ctx=256, n_threads=2)
    other = llama_backend.LlamaCppBackend(write_tiny_gguf(folder / "o.gguf", seed=9), n_ctx=256, n_threads=2)
    yield target, same, other
    for b in (target, same, other):
        b.close()


def greedy_refs(target, n=8):
    cfg = GenerateConfig(max_new_tokens=40, max_draft=8, stop_tokens=target.stop_tokens)
    ps = prompts(target, n)
    return cfg, ps, [generate(target, p, None, cfg).tokens for p in ps]


def test_trimmed_drafter_greedy_exact_and_ids_map_back(pair):
    target, same, other = pair
    cfg, ps, refs = greedy_refs(target)
    counts = token_counts(refs[:4], target.n_vocab)
    kept = choose_kept(counts, target.tokenizer_hash, "target", coverage=1.0, always=target.stop_tokens)
    assert kept.k < target.n_vocab
    for draft_backend, k in ((same, None), (TrimmedLogits(same, kept.ids), kept), (other, None)):
        drafter = ModelDrafter(draft_backend, target.n_vocab, k, config=ModelDraftConfig(max_draft=5))
        accepted = drafted = 0
        for p, ref in zip(ps, refs):
            g = generate(target, p, drafter, cfg)
            assert g.tokens == ref
            accepted, drafted = accepted + g.stats.accepted, drafted + g.stats.drafted
        if draft_backend is same:  # the same weights draft exactly what the target says
            assert drafted > 0 and accepted == drafted
        if k is not None:  # every drafted id is a kept target id, mapped back from its row
            drafter.begin(ps[0])
            assert set(drafter.draft(5).tokens) <= set(kept.ids.tolist())
            assert drafted > 0 and accepted > 0


@pytest.mark.parametrize("policy", [{}, {"sure": 0.9}, {"ask_below": 1.0}])
def test_chained_drafter_exact_and_each_part_learns(pair, policy):
    target, same, other = pair
    cfg, ps, refs = greedy_refs(target)
    table = NgramTable.build([r for r in refs[:4] if len(r) >= 2], target.tokenizer_hash)
    for model_backend in (same, other):
        chained = ChainedDrafter(NgramDrafter(table), ModelDrafter(model_backend, target.n_vocab), **policy)
        for p, ref in zip(ps, refs):
            assert generate(target, p, chained, cfg).tokens == ref
        if not policy:  # the n-grams draft wherever they have a guess
            assert chained.ngram.calibrator.seen
        else:  # a high bar hands positions to the model
            assert chained.model.calibrator.seen and chained.steps > 0


@pytest.mark.parametrize("policy", [{}, {"sure": 0.9}, {"ask_below": 1.0}])
def test_chained_sampling_follows_target(pair, policy):
    """Whichever part drafts, and however the chained drafter picks between them, the
    sampled output must follow the target: the pick may not depend on the model's sample."""
    target, _, other = pair
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(target, 1)[0]
    joint, keys, index = two_token_outcomes(target, prompt, sampling)
    # an n-gram table from the target's own samples after this prompt: its drafts are often
    # right, so both parts draft and the model's first token competes with the n-grams'
    rng = np.random.default_rng(7)
    cfg = GenerateConfig(max_new_tokens=2, max_draft=2, sampling=sampling, stop_tokens=frozenset())
    samples = [generate(target, prompt, None, cfg, rng=rng).tokens for _ in range(30)]
    table = NgramTable.build([[*prompt[-3:], *s] for s in samples], target.tokenizer_hash)
    model = ModelDrafter(other, target.n_vocab, None, SamplingConfig(temperature=1.0), seed=1,
                         config=ModelDraftConfig(max_draft=2, min_survival=0.0))
    chained = ChainedDrafter(NgramDrafter(table), model, **policy)
    counts = np.zeros(len(keys))
    for _ in range(2500):
        key = tuple(generate(target, prompt, chained, cfg, rng=rng).tokens)
        assert key in index, f"sampled {key}, which the target gives probability 0"
        counts[index[key]] += 1
    if policy.get("ask_below"):
        assert chained.steps > 0
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3


class FixedLogits:
    """A drafter backend that always says the same thing: half its mass on one token."""

    def __init__(self, n_vocab: int, favourite: int) -> None:
        self.n_ctx, self.n_vocab = 256, n_vocab
        self.row = np.zeros(n_vocab)
        self.row[favourite] = np.log(n_vocab - 1)  # q(favourite) = 1/2

    def prefill(self, tokens) -> None:
        pass

    def forward(self, tokens) -> np.ndarray:
        return np.tile(self.row, (len(tokens), 1))

    def rollback(self, n: int) -> None:
        pass


@pytest.mark.parametrize("gap", [False, True])
def test_chained_pick_does_not_bias_sampling(pair, gap):
    """The model proposes the target's likeliest first token half the time and noise
    otherwise; the unsure n-grams always propose the second likeliest. A pick made on the
    model's *sample* (take it when it is the likely one) would propose the likeliest token
    far more often than the q it reports, and over-produce it; a pick made on the model's
    argmax leaves every proposal distributed as reported."""
    target = pair[0]
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(target, 1)[0]
    joint, keys, index = two_token_outcomes(target, prompt, sampling)
    first = {}
    for (t1, _), p in joint.items():
        first[t1] = first.get(t1, 0.0) + p
    best, second = sorted(first, key=first.get, reverse=True)[:2]
    model = ModelDrafter(FixedLogits(target.n_vocab, best), target.n_vocab, None,
                         SamplingConfig(temperature=1.0), seed=3,
                         config=ModelDraftConfig(max_draft=1, min_survival=0.0))
    if gap:  # no n-gram draft here; one only after the likeliest token: deciding how to fill
        # the gap on the model's sample (rather than its argmax) would bias the proposals
        ngram = LookupPart({(best,): Draft([second], [0.9])})
        model.cfg = ModelDraftConfig(max_draft=2, min_survival=0.0)
    else:
        ngram = ScriptedPart([second], [0.3])
    chained = ChainedDrafter(ngram, model, ask_below=0.5)
    cfg = GenerateConfig(max_new_tokens=3, max_draft=2, sampling=sampling, stop_tokens=frozenset())
    rng = np.random.default_rng(5)
    counts = np.zeros(len(keys))
    for _ in range(3000):
        counts[index[tuple(generate(target, prompt, chained, cfg, rng=rng).tokens[:2])]] += 1
    assert model.steps > 0 and (gap or chained.looks.seen)
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3


class ScriptedPart:
    """A drafter part that always proposes `draft` and records what it is told."""

    def __init__(self, tokens: list[int], confidence: list[float]) -> None:
        self.proposal, self.asked, self.peeked, self.updates, self.steps, self.n_vocab = (
            Draft(tokens, confidence), 0, 0, [], 0, 50)

    def begin(self, prompt) -> None:
        pass

    def peek(self) -> tuple[int, float]:
        self.peeked += 1
        return self.proposal.tokens[0], self.proposal.confidence[0]

    def draft(self, max_tokens: int, after=()) -> Draft:
        self.asked += 1
        return self.proposal.truncate(max_tokens)

    def update(self, draft: Draft, n_accepted: int, committed) -> None:
        self.updates.append((list(draft.tokens), n_accepted))


class LookupPart(ScriptedPart):
    """An n-gram stand-in whose draft depends on the tokens it continues (`after`)."""

    def __init__(self, drafts: dict[tuple, Draft]) -> None:
        super().__init__([0], [0.0])
        self.drafts = drafts

    def draft(self, max_tokens: int, after=()) -> Draft:
        self.asked += 1
        return self.drafts.get(tuple(after), Draft()).truncate(max_tokens)


def test_chained_fills_a_gap_with_one_model_token_then_ngrams():
    model = ScriptedPart([7, 8, 9], [0.6, 0.5, 0.5])
    ngram = LookupPart({(7,): Draft([1, 2], [0.9, 0.9])})  # nothing here, a match after 7
    chained = ChainedDrafter(ngram, model)
    draft = chained.draft(4)
    assert draft.tokens == [7, 1, 2] and model.peeked == 1 and model.asked == 1
    chained.update(draft, 3, [7, 1, 2, 4])
    assert model.updates == [([7], 1)] and ngram.updates == [([1, 2], 2)]
    ngram.drafts = {}  # nothing after the model's token either: the model drafts on alone
    draft = chained.draft(4)
    assert draft.tokens == [7, 8, 9]
    chained.update(draft, 1, [7, 5])
    assert model.updates[-1] == ([7, 8, 9], 1) and ngram.updates[-1] == ([], 0)


@pytest.mark.parametrize("ngram_conf, model_conf, ask_below, looked, winner", [
    (0.3, 0.7, None, 0, "ngram"),  # default: the model only fills an empty n-gram draft
    (0.6, 0.9, 0.5, 0, "ngram"),   # the n-grams are sure enough: the model is not asked
    (0.3, 0.7, 0.5, 1, "model"),   # unsure n-grams, likelier model token: the model drafts
    (0.3, 0.2, 0.5, 1, "ngram"),   # looked, but less likely than the n-grams: theirs stands
])
def test_chained_ask_below_picks_the_likelier_first_token(ngram_conf, model_conf, ask_below, looked, winner):
    ngram = ScriptedPart([1, 2, 3], [ngram_conf, 0.9, 0.9])
    model = ScriptedPart([7, 8], [model_conf, 0.5])
    chained = ChainedDrafter(ngram, model, ask_below=ask_below)
    draft = chained.draft(1 if looked else 4)  # a one-token budget still looks
    assert model.peeked == looked and model.asked == (winner == "model")
    if winner == "ngram":
        assert draft.tokens == [1, 2, 3][: len(draft.tokens)]
        chained.update(draft, 1, [draft.tokens[0], 9])
        # only the part whose tokens were verified learns from the outcome
        assert ngram.updates == [(draft.tokens, 1)] and model.updates == [([], 0)]
    else:  # the model's one token, then the n-grams after it
        assert draft.tokens == [7]
        chained.update(draft, 1, [7, 9])
        assert model.updates == [([7], 1)] and ngram.updates == [([], 0)]
        draft = chained.draft(4)
        assert draft.tokens == [7, 1, 2, 3]
        chained.update(draft, 2, [7, 1, 5])  # the model's token and one n-gram token held
        assert model.updates[-1] == ([7], 1) and ngram.updates[-1] == ([1, 2, 3], 1)


def test_chained_looks_learn_whom_to_trust():
    """Where the two disagree and the model has been right, it takes over even when its own
    probability is below the n-grams'; where they agree, the n-gram draft is trusted more."""
    ngram = ScriptedPart([1, 2, 3], [0.4, 0.9, 0.9])
    model = ScriptedPart([7, 8], [0.3, 0.5])
    chained = ChainedDrafter(ngram, model, ask_below=0.5)
    assert chained.draft(4).tokens == [1, 2, 3]  # before any evidence: 0.4 beats 0.3
    for _ in range(10):  # the target keeps saying 7
        chained.draft(4)
        chained.update(Draft([1, 2, 3], [0.4, 0.9, 0.9]), 0, [7])
    assert chained.draft(4).tokens[0] == 7
    model.proposal = Draft([1, 8], [0.3, 0.5])  # now they agree, and the target says 1
    for _ in range(10):
        chained.draft(4)
        chained.update(Draft([1, 2, 3], [0.4, 0.9, 0.9]), 1, [1, 5])
    assert chained.draft(4).confidence[0] > 0.7  # agreement lifted the n-grams' 0.4


def test_chained_takes_one_policy():
    with pytest.raises(TascError, match="not both"):
        ChainedDrafter(ScriptedPart([1], [0.5]), ScriptedPart([2], [0.5]), sure=0.5, ask_below=0.5)


def test_drafter_head_width_mismatch_is_refused(pair):
    target, same, _ = pair
    kept = choose_kept(np.ones(target.n_vocab, dtype=np.int64), "h", "target", top_k=10)
    with pytest.raises(TascError, match="different exports"):
        ModelDrafter(same, target.n_vocab, kept)  # full-width head with a 10-id list


@pytest.mark.parametrize("trim", [False, True])
def test_sampling_with_model_drafts_follows_target(pair, trim):
    target, same, other = pair
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(target, 1)[0]
    joint, keys, index = two_token_outcomes(target, prompt, sampling)
    # the unrelated model drafts: its distribution differs from the target's, so acceptance
    # and the residual both matter; trimming zeroes part of q
    ids = np.arange(0, target.n_vocab, 2)
    draft_backend = TrimmedLogits(other, ids) if trim else other
    kept = KeptVocab(ids, target.n_vocab, 1.0, "raw", 1, target.tokenizer_hash) if trim else None
    drafter = ModelDrafter(draft_backend, target.n_vocab, kept, SamplingConfig(temperature=1.0), seed=1,
                           config=ModelDraftConfig(max_draft=2, min_survival=0.0))
    cfg = GenerateConfig(max_new_tokens=2, max_draft=2, sampling=sampling, stop_tokens=frozenset())
    rng = np.random.default_rng(5)
    counts = np.zeros(len(keys))
    drafted = 0
    for _ in range(2500):
        g = generate(target, prompt, drafter, cfg, rng=rng)
        key = tuple(g.tokens)
        assert key in index, f"sampled {key}, which the target gives probability 0"
        counts[index[key]] += 1
        drafted += g.stats.drafted
    assert drafted > 0
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3


def test_confidence_led_draft_length_does_not_bias_sampling(pair):
    """The loop cuts a draft by its confidences (cost curve) and the drafter stops on them:
    in sampling mode a confidence that depends on the token *sampled* at that position makes
    inclusion depend on the sample, and output leaves the target distribution (p ~ 1e-72 here
    before the fix). Confidences must come from the drafter's distribution only."""
    target, same, _ = pair
    sampling = SamplingConfig(temperature=1.5, top_k=4)
    prompt = prompts(target, 1)[0]
    joint, keys, index = two_token_outcomes(target, prompt, sampling)
    # the target's own weights at another temperature: q overlaps p, so a sample-dependent
    # cut changes what is accepted; one draft row pays off only for a confident token
    drafter = ModelDrafter(same, target.n_vocab, None, SamplingConfig(temperature=1.0), seed=1,
                           config=ModelDraftConfig(max_draft=2))
    cfg = GenerateConfig(max_new_tokens=2, max_draft=2, sampling=sampling, stop_tokens=frozenset())
    cost = CostCurve((1.0, 1.2, 1.5))
    rng = np.random.default_rng(5)
    counts = np.zeros(len(keys))
    drafted = 0
    for _ in range(2500):
        g = generate(target, prompt, drafter, cfg, cost, rng=rng)
        counts[index[tuple(g.tokens)]] += 1
        drafted += g.stats.drafted
    assert 0 < drafted < 2500  # the cost curve did cut some drafts and keep others
    assert chi_square_pvalue(counts, np.array([joint[k] for k in keys])) > 1e-3


def test_cold_drafter_evaluates_the_next_prompt_from_scratch(pair):
    """A bench runs every request cold; without cold() the drafter would reuse the prompt
    prefix another method (or the previous row) left in its cache."""
    target, same, _ = pair
    a, b = prompts(target, 2)
    assert a[:3] == b[:3]  # the chat template: a prefix every prompt shares
    drafter = ModelDrafter(same, target.n_vocab, config=ModelDraftConfig(prefill_gap=0))
    drafter.begin(a)
    drafter.draft(3)
    drafter.begin(b)
    drafter.draft(3)
    assert same.reused_tokens > 0  # warm: the shared prefix came from the cache
    drafter.cold()
    drafter.begin(b)
    drafter.draft(3)
    assert same.reused_tokens == 0
