"""The loop on a steep, sawtooth verify curve: filling drafts to the cheapest row count
(cost.py, decode.pad_draft) and exploring with optimistic acceptance estimates
(drafters.AcceptanceCalibrator).

llama.cpp multiplies 4 rows at a time on x86, so a forward over 8 rows can cost less than one
over 5. The loop then verifies filler past the drafter's tokens: these tests pin when it does
(only where more rows cost less), that a filler row is a point-mass proposal in sampling (so
output keeps the target distribution), and that greedy output stays plain greedy's on a real
llama.cpp model while filling happens. Where a second row costs twice the first, a drafter
whose prior is pessimistic never drafts and so never learns it was right: the estimates are
optimistic until outcomes come in.
"""

from __future__ import annotations

import numpy as np
import pytest

from stats import chi_square_pvalue
from tasc_edge.cost import CostCurve, best_draft_length, best_rate
from tasc_edge.decode import Draft, GenerateConfig, generate, pad_draft
from tasc_edge.drafters import (CALIBRATION_WEIGHT, AcceptanceCalibrator, NgramDraftConfig, NgramDrafter,
                                replay_outcomes)
from tasc_edge.ngram import NgramTable
from tasc_edge.verify import SamplingConfig, target_probs, verify_sampling

# t(k) in ms, k = 1..16, measured on Gemma 3 270M q4_0 (llama.cpp, 2-core AMD EPYC, logits for
# every row): multiples of 4 are cheap, the rows in between each cost a pass over the head
GEMMA_MS = (10.7, 24.0, 30.6, 32.6, 47.9, 54.7, 63.8, 44.6, 60.1, 64.3, 69.8, 50.0, 65.5, 70.8, 78.6, 53.2)
SAWTOOTH = CostCurve(tuple(m / GEMMA_MS[0] for m in GEMMA_MS))


def clamped(curve: CostCurve) -> CostCurve:
    """The curve as this project used to keep it: never cheaper for more rows."""
    out: list[float] = []
    for r in curve.ratios:
        out.append(max(r, out[-1]) if out else r)
    return CostCurve(tuple(out))


def test_a_draft_is_filled_up_to_the_cheap_row_count():
    six = [0.9] * 6  # 7 rows cost 63.8 ms, 8 rows 44.6: verify one filler row too
    assert best_draft_length(six, SAWTOOTH, room=12) == 7
    assert best_rate(six, SAWTOOTH, room=12) > best_rate(six, SAWTOOTH)  # filling pays
    # without room to fill it is cut where the rows it has are cheapest; the old monotone
    # curve saw neither and cut every draft of up to 11 tokens at 3
    assert best_draft_length(six, SAWTOOTH) == 3
    assert best_draft_length(six, clamped(SAWTOOTH), room=12) == 3
    assert best_draft_length([0.9] * 9, SAWTOOTH, room=12) == 11


def test_no_filler_where_more_rows_cost_more():
    rising = CostCurve((1.0, 1.6, 2.0, 2.3, 2.6, 2.9, 3.2, 3.5))
    for n in range(6):
        assert best_draft_length([0.95] * n, rising, room=7) <= n
    assert best_draft_length([], SAWTOOTH, room=12) == 0  # nothing beats one row for one token


def test_cost_past_the_curve_keeps_rising_after_a_falling_last_step():
    assert SAWTOOTH.ratios[-1] < SAWTOOTH.ratios[-2]  # 16 rows are cheaper than 15
    past = [SAWTOOTH.cost(k) for k in range(16, 24)]
    assert all(b > a for a, b in zip(past, past[1:]))


def test_pad_draft_fills_with_point_masses():
    probs = np.full((2, 6), 1 / 6)
    d = pad_draft(Draft([3, 4], [0.8, 0.7], probs), 4, filler=4)
    assert d.tokens == [3, 4, 4, 4] and d.confidence == [0.8, 0.7, 0.0, 0.0]
    assert np.array_equal(d.probs[:2], probs) and np.array_equal(d.probs[2:], np.eye(6)[[4, 4]])
    assert pad_draft(Draft([3, 4], [0.8, 0.7]), 4, filler=9).probs is None  # n-gram drafts stay point masses
    assert pad_draft(Draft([3, 4, 5], [0.8, 0.7, 0.6]), 2, filler=9).tokens == [3, 4]  # d below: a cut


def test_filled_sampling_follows_the_target():
    """One forward over [pending, x, filler]: x drawn from a model's q, the filler a point mass
    the target often agrees with. Row 1 stands for "after x" whatever x is (the test's
    simplification), so the first committed token must follow p0 and the second, when the
    forward commits one after an accepted x, p1. Treating the filler row with the model's q
    instead of a point mass over-accepts the filler (in a probe every second token was the
    filler); this catches it."""
    sampling = SamplingConfig(temperature=1.0)
    logits = np.log(np.array([[0.1, 0.5, 0.2, 0.2, 1e-9],   # p0: x = 1 is likely
                              [0.15, 0.05, 0.6, 0.1, 0.1],  # p1 after x: the filler 2 is likely
                              [0.2, 0.2, 0.2, 0.2, 0.2]]))
    p0, p1 = target_probs(logits[0], sampling), target_probs(logits[1], sampling)
    q = np.array([[0.3, 0.3, 0.2, 0.1, 0.1]])  # the drafter's distribution for x
    rng = np.random.default_rng(0)
    first, second = np.zeros(5), np.zeros(5)
    for _ in range(20_000):
        x = int(rng.choice(5, p=q[0]))  # the drafter's sample
        draft = pad_draft(Draft([x], [0.7], q), 2, filler=2)
        n_acc, nxt = verify_sampling(draft.tokens, draft.probs, logits, sampling, rng)
        committed = [*draft.tokens[:n_acc], nxt]
        first[committed[0]] += 1
        if n_acc >= 1:
            second[committed[1]] += 1
    assert chi_square_pvalue(first, p0) > 1e-3
    assert second.sum() > 5_000 and chi_square_pvalue(second, p1) > 1e-3


def test_optimism_fades_to_the_posterior_mean():
    plain, optimist = AcceptanceCalibrator(4.0), AcceptanceCalibrator(4.0, explore=1.0)
    assert plain.estimate("b", prior=0.8) == pytest.approx(0.8)  # no optimism: the prior
    assert optimist.estimate("b", prior=0.8) > 0.95  # unseen: one posterior std above it
    for i in range(400):  # right 99% of the time
        for c in (plain, optimist):
            c.observe("b", accepted=i % 100 != 0)
    mean = plain.estimate("b", prior=0.8)
    assert 0.97 < mean < optimist.estimate("b", prior=0.8) < mean + 0.01


def test_replay_counts_drafts_as_verification_judges_them():
    table = NgramTable.build([[1, 2, 3, 4, 5, 6]], "h")
    # along the table's own sequence every draft is right: from position 1 on it drafts the
    # rest of it (5, 4, 3, 2, 1 tokens); position 0 has no context to match
    seen = replay_outcomes(table, [([9], [1, 2, 3, 4, 5, 6])])
    assert sum(r for r, _ in seen.values()) == sum(n for _, n in seen.values()) == 15
    # 1 then 7: at position 1 it drafts 2 (right) then 3 (wrong, and judging stops); at
    # position 2 it drafts 3 (wrong)
    seen = replay_outcomes(table, [([9], [1, 2, 7])])
    assert (sum(r for r, _ in seen.values()), sum(n for _, n in seen.values())) == (1, 3)


def test_export_calibration_seeds_the_drafter_capped():
    table = NgramTable.build([[1, 2, 3, 4, 5, 6]], "h")
    table.calibration = {(3, 3, 3): (990, 1000), (0, 1, 2): (1, 4)}
    seen = NgramDrafter(table).calibrator.seen
    assert seen[(3, 3, 3)] == pytest.approx([0.99 * CALIBRATION_WEIGHT, CALIBRATION_WEIGHT])
    assert seen[(0, 1, 2)] == [1, 4]  # fewer outcomes than the cap: as measured
    bare = NgramDrafter(NgramTable.build([[1, 2, 3]], "h"))
    assert not bare.calibrator.seen
    # optimism stands in for a missing calibration only: it costs drafts verified to be wrong
    assert NgramDrafter(table).calibrator.explore == 0.0 and bare.calibrator.explore > 0


llama_backend = pytest.importorskip("tasc_edge.runtime.llama_backend")


class EveryOther:
    """Drafts the plain greedy continuation's next `length` tokens, every other token wrong:
    short, unsure drafts that the sawtooth curve fills up to 4, 8 or 12 rows."""

    def __init__(self, reference: list[int], length: int) -> None:
        self.reference, self.length, self.pos, self.updates = reference, length, 0, []

    def begin(self, prompt) -> None:
        self.pos = 0

    def draft(self, max_tokens: int) -> Draft:
        ref = self.reference[self.pos: self.pos + min(self.length, max_tokens)]
        return Draft([t if i % 2 == 0 else t + 1 for i, t in enumerate(ref)], [0.9] * len(ref))

    def update(self, draft, n_accepted, committed) -> None:
        self.updates.append((list(draft.tokens), n_accepted))
        self.pos += len(committed)


def test_filled_greedy_equals_plain_on_llama_cpp(tmp_path):
    from tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3)
    cfg = GenerateConfig(max_new_tokens=48, max_draft=12, stop_tokens=frozenset())
    with llama_backend.LlamaCppBackend(path, n_ctx=256, n_threads=2) as b:
        padded = 0
        for text in ("the large coffee", "hello json two milk", "order size drink"):
            prompt = b.chat_prompt(text)
            plain = generate(b, prompt, None, cfg, SAWTOOTH)  # one row a forward: t(1) each
            ref = plain.tokens
            assert plain.stats.curve_cost == plain.stats.target_forwards
            drafter = EveryOther(ref, length=6)
            got = generate(b, prompt, drafter, cfg, SAWTOOTH)
            assert got.tokens == ref
            padded += got.stats.padded
            # the drafter hears only of its own tokens, never of the filler
            assert all(len(toks) <= 6 and n <= len(toks) for toks, n in drafter.updates)
            assert got.stats.accepted <= got.stats.drafted
        assert padded > 0  # the test really filled


def test_a_pessimistic_prior_drafts_when_optimistic_or_calibrated(tmp_path):
    """A task table made of the model's own outputs drafts right, but its prior estimates
    (0.8 x the n-gram mixture's peak) never pay for rows costing 2-3x the first: without
    optimism it never drafts, never verifies, never learns. With optimism, or with the
    calibration an export measures along the model's outputs, it drafts."""
    from tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3)
    cfg = GenerateConfig(max_new_tokens=48, max_draft=12, stop_tokens=frozenset())
    with llama_backend.LlamaCppBackend(path, n_ctx=256, n_threads=2) as b:
        prompts = [b.chat_prompt(t) for t in ("the large coffee", "hello json two milk",
                                              "order size drink", "two milk please")]
        refs = [generate(b, p, None, cfg).tokens for p in prompts]
        table = NgramTable.build([r + [2] for r in refs], b.tokenizer_hash)
        calibrated = NgramTable.build([r + [2] for r in refs], b.tokenizer_hash)
        calibrated.calibration = replay_outcomes(table, zip(prompts, refs))  # what an export measures
        for t, explore, drafts in ((table, 0.0, False), (table, 1.0, True), (calibrated, 0.0, True)):
            drafter = NgramDrafter(t, NgramDraftConfig(explore=explore))  # kept across prompts
            forwards = 0
            for p, ref in zip(prompts, refs):
                got = generate(b, p, drafter, cfg, SAWTOOTH)
                assert got.tokens == ref
                forwards += got.stats.target_forwards
            assert (forwards < sum(map(len, refs)) * 0.7) is drafts, (explore, forwards)
