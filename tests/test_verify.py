"""Verification rules on fixed logits: greedy prefix acceptance and exact speculative sampling."""

import numpy as np
import pytest

from tasc_edge.verify import SamplingConfig, target_probs, verify_greedy, verify_sampling
from stats import chi_square_pvalue


def test_greedy_accepts_longest_agreeing_prefix():
    logits = np.zeros((4, 10))
    for row, tok in enumerate([3, 5, 7, 9]):
        logits[row, tok] = 1.0
    assert verify_greedy([3, 5, 7], logits) == (3, 9)  # all right: bonus token from last row
    assert verify_greedy([3, 6, 7], logits) == (1, 5)  # second wrong: target's own token
    assert verify_greedy([], logits[:1]) == (0, 3)  # no draft = plain greedy step


def test_target_probs_top_k_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert np.allclose(p, [0.625, 0.375, 0, 0])
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_p=0.75))
    assert np.allclose(p, [0.625, 0.375, 0, 0])
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_p=0.85))
    assert np.allclose(p, np.array([0.5, 0.3, 0.15, 0]) / 0.95)


@pytest.mark.parametrize("draft,use_q", [([2], False), ([0], False), ([1, 3], False),
                                         ([2, 0], True), ([3], True)])
def test_speculative_sampling_first_token_follows_target(draft, use_q):
    """The first committed token must be distributed as p, whatever was drafted (a fixed
    token = point mass, or a draw from a drafter distribution q)."""
    rng = np.random.default_rng(1)
    cfg = SamplingConfig(temperature=1.0)
    logits = np.log(np.array([[0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]))
    q = np.array([[0.1, 0.1, 0.1, 0.7], [0.4, 0.3, 0.2, 0.1]]) if use_q else None
    counts = np.zeros(4)
    for _ in range(20000):
        if use_q:  # a model drafter's tokens are draws from its own distribution q
            draft = [int(rng.choice(4, p=q[i])) for i in range(len(draft))]
        n_acc, nxt = verify_sampling(draft, q, logits[: len(draft) + 1], cfg, rng)
        first = draft[0] if n_acc > 0 else nxt
        counts[first] += 1
    assert chi_square_pvalue(counts, target_probs(logits[0], cfg)) > 1e-3


def test_chi_square_detects_a_biased_sampler():
    """Negative control: the test above has power - always accepting the draft fails it."""
    rng = np.random.default_rng(2)
    p = np.array([0.1, 0.2, 0.6, 0.1])
    biased = np.zeros(4)
    for _ in range(20000):
        biased[2 if rng.random() < 0.8 else rng.choice(4, p=p)] += 1
    assert chi_square_pvalue(biased, p) < 1e-6


def test_out_of_range_draft_is_rejected():
    rng = np.random.default_rng(0)
    logits = np.log(np.full((2, 4), 0.25))
    n_acc, nxt = verify_sampling([99], None, logits, SamplingConfig(temperature=1.0), rng)
    assert n_acc == 0 and 0 <= nxt < 4
    assert verify_greedy([99], logits)[0] == 0


def test_chrf_and_exact_match():
    from tasc_edge.metrics import chrf, exact_match

    assert chrf("The Eagle is a pub.", "The Eagle is a pub.") == 100.0
    assert chrf("abc", "xyz") == 0.0
    assert 0 < chrf("The Eagle is a cheap pub", "The Eagle is a pub") < 100
    assert chrf("a b c", "abc") == 100.0  # whitespace does not count
    assert exact_match(" x ", "x") == 1.0 and exact_match("x", "y") == 0.0
