"""NgramTable / ContextNgrams against a brute-force dict count on synthetic sequences."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from tasc_edge.errors import TascError
from tasc_edge.ngram import ContextNgrams, NgramTable, _hash_windows, context_hash


def brute_counts(seqs, k):
    counts = defaultdict(Counter)
    for s in seqs:
        for i in range(k, len(s)):
            counts[tuple(s[i - k:i])][s[i]] += 1
    return counts


@pytest.fixture
def corpus():
    rng = np.random.default_rng(0)
    # a small alphabet so contexts repeat with several continuations
    return [rng.integers(0, 12, size=rng.integers(2, 40)).tolist() for _ in range(300)]


def test_vectorised_hash_matches_scalar_hash():
    ids = np.array([0, 5, 262143, 7, 7, 1 << 20], dtype=np.int64)
    for k in (1, 2, 3, 5):
        got = _hash_windows(ids, k)
        want = [context_hash(ids[i:i + k].tolist()) for i in range(len(ids) - k + 1)]
        assert got.tolist() == want


def test_counts_match_brute_force(corpus):
    table = NgramTable.build(corpus, "tok", max_order=4)
    for k in (1, 2, 3):
        brute = brute_counts(corpus, k)
        assert len(table.keys[k - 1]) == len(brute)
        for ctx, cnt in brute.items():
            cont = table.lookup_exact(ctx)
            assert cont is not None
            assert dict(zip(cont.tokens.tolist(), cont.counts.tolist())) == dict(cnt)
            assert cont.total == sum(cnt.values())
            assert list(cont.counts) == sorted(cont.counts, reverse=True)


def test_longest_match_backoff():
    table = NgramTable.build([[1, 2, 3, 4], [9, 2, 3, 5], [7, 7, 3, 6]], "tok", max_order=4)
    assert table.lookup([1, 2, 3])[0] == 3  # exact 3-token context
    k, cont = table.lookup([8, 2, 3])  # backs off to (2, 3)
    assert k == 2 and sorted(cont.tokens.tolist()) == [4, 5]
    k, cont = table.lookup([8, 8, 3])  # backs off to (3,)
    assert k == 1 and sorted(cont.tokens.tolist()) == [4, 5, 6]
    assert table.lookup([100, 200]) == (0, None)


def test_save_load_round_trip(tmp_path, corpus):
    table = NgramTable.build(corpus, "abc123", max_order=5)
    path = tmp_path / "t.npz"
    table.save(path)
    loaded = NgramTable.load(path, expect_tokenizer_hash="abc123")
    assert loaded.max_order == 5 and loaded.n_tokens == table.n_tokens
    for ctx in ([1], [1, 2], [3, 4, 5], [0, 0, 0, 0]):
        a, b = table.lookup(ctx), loaded.lookup(ctx)
        assert a[0] == b[0]
        if a[1] is not None:
            assert a[1].tokens.tolist() == b[1].tokens.tolist()
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file
    assert loaded.calibration is None  # built here, not calibrated by an export
    table.calibration = {(3, 3, 3): (99, 100), (0, 1, 2): (1, 5)}
    table.save(path)
    assert NgramTable.load(path).calibration == table.calibration


def test_load_refuses_other_tokenizer(tmp_path, corpus):
    path = tmp_path / "t.npz"
    NgramTable.build(corpus, "tokenizer-A").save(path)
    with pytest.raises(TascError, match="rebuild the table with this model"):
        NgramTable.load(path, expect_tokenizer_hash="tokenizer-B")


def test_load_refuses_corrupt_and_wrong_version(tmp_path, corpus):
    path = tmp_path / "t.npz"
    NgramTable.build(corpus, "tok").save(path)
    data = bytearray(path.read_bytes())
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TascError, match="not a readable"):
        NgramTable.load(tmp_path / "cut.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["format_version"] = np.array(99)
    np.savez(tmp_path / "v99.npz", **arrays)
    with pytest.raises(TascError, match="format 99"):
        NgramTable.load(tmp_path / "v99.npz")


def test_empty_corpus_is_an_error():
    with pytest.raises(TascError, match="empty corpus"):
        NgramTable.build([[], [5]], "tok")


def test_context_ngrams_incremental_equals_batch(corpus):
    seq = [t for s in corpus[:20] for t in s]
    inc = ContextNgrams(max_order=4)
    for i in range(0, len(seq), 7):  # fed in uneven chunks, as accepted tokens arrive
        inc.extend(seq[i:i + 7])
    for k in (1, 2, 3):
        for ctx, cnt in brute_counts([seq], k).items():
            cont = inc.lookup_exact(ctx)
            assert dict(zip(cont.tokens.tolist(), cont.counts.tolist())) == dict(cnt)


def test_context_ngrams_ties_go_to_most_recent():
    ctx = ContextNgrams(max_order=3)
    ctx.extend([1, 2, 1, 3])  # after (1,): 2 once, then 3 once -> the later one wins
    assert ctx.lookup([1])[1].tokens[0] == 3


def test_draft_after_tokens_continues_them(corpus):
    """draft(after=t) is what the drafter would say once t were committed (a chained
    drafter asks this after the model's token), and leaves the context untouched."""
    from tasc_edge.drafters import NgramDrafter

    table = NgramTable.build(corpus, "h")
    seq = corpus[0]
    d = NgramDrafter(table)
    d.begin(seq[:5])
    after = d.draft(6, after=seq[5:7])
    e = NgramDrafter(table)
    e.begin(seq[:7])
    assert after.tokens == e.draft(6).tokens and after.tokens
    assert d.context.tokens == list(seq[:5])
