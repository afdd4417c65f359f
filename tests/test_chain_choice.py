"""ChainedDrafter's choice between the n-grams' draft and a deep head's chain: by expected
accepted tokens alone, or, given the loop's cost curve, by tokens per unit of verify time.

The parts are fixed proposals here (numpy only): the test is about which one the policy
takes, with confidences set by hand; tests/test_hidden_head.py runs the same policy with a
real head on llama.cpp for exactness."""

from __future__ import annotations

from typing import Sequence

import pytest

from tasc_edge.cost import CostCurve, best_draft_length, best_rate
from tasc_edge.decode import Draft
from tasc_edge.model_drafter import ChainedDrafter, expected_accepted

# this machine's llama.cpp curve for Gemma 3 270M q4_0: a fifth verify row is dear
CPU_CURVE = CostCurve((1.00, 1.14, 1.31, 1.36, 2.04, 2.25, 2.47, 2.47, 2.76, 2.98, 3.19, 3.19))


class FixedNgrams:
    """An n-gram part with one fixed draft, and nothing after any other prefix."""

    def __init__(self, draft: Draft) -> None:
        self.fixed = draft

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def draft(self, max_tokens: int, after: Sequence[int] = ()) -> Draft:
        return Draft() if after else self.fixed.truncate(max_tokens)

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        pass


class FixedHead:
    """A depth-3 head part whose argmax chain is fixed."""

    max_depth, free_look, n_vocab, steps = 3, True, 100, 0

    def __init__(self, chain: Draft) -> None:
        self.chain = chain

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def peek(self) -> tuple[int, float]:
        return self.chain.tokens[0], self.chain.confidence[0]

    def peek_chain(self, max_tokens: int) -> Draft:
        return self.chain.truncate(max_tokens)

    def draft(self, max_tokens: int, after: Sequence[int] = ()) -> Draft:
        return Draft() if after else self.chain.truncate(max_tokens)

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        pass


# n-grams: unsure first token (below the look threshold), then a long tail; the head: as
# unsure a first token, then two sure ones
NGRAMS = Draft([1, 2, 3, 4, 5, 6, 7, 8], [0.75] + [0.9] * 7)
HEAD = Draft([11, 12, 13], [0.75, 0.95, 0.95])


def test_best_rate_is_the_rate_at_best_draft_length():
    conf = NGRAMS.confidence
    d = best_draft_length(conf, CPU_CURVE)
    assert d == 3  # the fifth row (d = 4) would cost 50% more than the fourth
    assert best_rate(conf, CPU_CURVE) == pytest.approx((1 + expected_accepted(conf[:d])) / CPU_CURVE.cost(d + 1))
    assert best_rate([], CPU_CURVE) == 1.0  # plain decoding: one token per t(1)


def test_cost_curve_prefers_a_short_sure_chain_to_a_long_tail():
    # by count the n-grams' long tail wins; cut where the curve makes it worth verifying, the
    # head's three tokens are worth more per unit of time
    assert expected_accepted(NGRAMS.confidence) > expected_accepted(HEAD.confidence)
    assert best_rate(HEAD.confidence, CPU_CURVE) > best_rate(NGRAMS.confidence, CPU_CURVE)
    by_count = ChainedDrafter(FixedNgrams(NGRAMS), FixedHead(HEAD))
    by_rate = ChainedDrafter(FixedNgrams(NGRAMS), FixedHead(HEAD), cost=CPU_CURVE)
    assert by_count.draft(12).tokens == NGRAMS.tokens
    assert by_rate.draft(12).tokens == HEAD.tokens


def test_flat_cost_curve_chooses_like_the_count():
    # memory-bound ideal: every verify row is free, so the longer expected draft wins again
    flat = ChainedDrafter(FixedNgrams(NGRAMS), FixedHead(HEAD), cost=CostCurve.flat(16))
    assert flat.draft(12).tokens == NGRAMS.tokens


def test_gap_fill_chooses_the_chain_by_rate_too():
    # the n-grams have nothing here, and after the head's first token only a long unsure tail
    class TailAfterFirst(FixedNgrams):
        def draft(self, max_tokens: int, after: Sequence[int] = ()) -> Draft:
            if list(after) == HEAD.tokens[:1]:
                return Draft([21, 22, 23, 24, 25, 26], [0.93] * 6).truncate(max_tokens)
            return Draft()

    tail = expected_accepted([0.93] * 6)
    assert tail > expected_accepted(HEAD.confidence[1:])  # by count the n-grams continue
    by_count = ChainedDrafter(TailAfterFirst(Draft()), FixedHead(HEAD))
    by_rate = ChainedDrafter(TailAfterFirst(Draft()), FixedHead(HEAD), cost=CPU_CURVE)
    assert by_count.draft(12).tokens == [11, 21, 22, 23, 24, 25, 26]
    assert by_rate.draft(12).tokens == HEAD.tokens
