"""Model drafters: a small same-tokenizer model (optionally with a VocabTrim head), alone or
chained behind the n-gram drafter.

`ModelDrafter` runs its own backend (same prefill / forward / rollback protocol as the
target; one drafter per backend) and keeps that cache in step lazily: before drafting it compares the tokens its cache
holds with the committed sequence, rolls back to the common prefix and feeds what is missing
(one forward), so rejected drafts cost nothing to undo. A trimmed head returns logits over
`kept.ids` only; drafted rows map back to target ids, and for sampling the drafter's
distribution is spread onto the full vocabulary with zeros elsewhere, which is all
speculative sampling needs to stay exact.

`ChainedDrafter`: the n-gram drafter goes first (free: no weights read); the model drafter
fills in one token where the n-grams have no guess (or, asked to, where they are unsure and
it disagrees and has been right more often), and the n-grams continue after it. A model that
drafts several tokens from one look (a hidden head of depth > 1) offers its whole chain
there instead, taken when it is worth more: more tokens per unit of verify time on the
loop's cost curve, or without one more expected accepted tokens. Both learn from the verification
of their own part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tasc_edge.cost import CostCurve, best_rate
from tasc_edge.decode import Backend, Draft, common_prefix_length
from tasc_edge.drafters import AcceptanceCalibrator, NgramDrafter
from tasc_edge.errors import TascError
from tasc_edge.verify import SamplingConfig, sample, target_probs
from tasc_edge.vocab_trim import KeptVocab


@dataclass(frozen=True)
class ModelDraftConfig:
    max_draft: int = 6  # drafter steps per target forward at most (gamma)
    min_survival: float = 0.1  # stop once P(all drafts so far accepted) drops below
    prior_strength: float = 4.0
    prefill_gap: int = 32  # feed more missing tokens than this with prefill(), not forward()


class ModelDrafter:
    def __init__(self, backend: Backend, n_vocab: int, kept: KeptVocab | None = None,
                 sampling: SamplingConfig | None = None, seed: int = 0,
                 config: ModelDraftConfig | None = None) -> None:
        width = getattr(backend, "n_vocab", None)
        want = kept.k if kept is not None else n_vocab
        if width is not None and width != want:
            raise TascError(f"the drafter's head has {width} rows but "
                            f"{'the kept vocabulary has ' + str(kept.k) if kept else 'the target vocabulary is ' + str(n_vocab)}"
                            "; the drafter and its kept-id list come from different exports")
        if kept is not None and kept.n_vocab > n_vocab:
            raise TascError(f"kept ids index a vocabulary of {kept.n_vocab}, the target has {n_vocab}")
        self.backend, self.n_vocab, self.kept = backend, n_vocab, kept
        self.sampling = sampling or SamplingConfig()
        self.cfg = config or ModelDraftConfig()
        self.rng = np.random.default_rng(seed)
        self.calibrator = AcceptanceCalibrator(self.cfg.prior_strength)
        self.committed: list[int] = []
        self.fed: list[int] = []  # tokens the drafter's cache holds
        self._logits: np.ndarray | None = None  # the model's logits after fed[-1]
        self.steps = 0  # drafter forwards (each reads the drafter's weights once), for MBSU
        self._buckets: list[tuple] = []

    def fresh(self) -> "ModelDrafter":
        """A new drafter (its own calibration, same settings) sharing this one's backend."""
        return ModelDrafter(self.backend, self.n_vocab, self.kept, self.sampling, config=self.cfg)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def begin(self, prompt: Sequence[int]) -> None:
        # no prefill here: a chained drafter may never need the model for this prompt
        self.committed = list(prompt)

    def cold(self) -> None:
        """Forget every cached token, so the next prompt is evaluated from scratch (a bench
        runs each request cold; the drafter's cache must not keep another method's prompt)."""
        self.backend.prefill([])
        self.fed, self._logits = [], None

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        judged = min(len(draft.tokens), n_accepted + 1)
        for i in range(judged):
            self.calibrator.observe(self._buckets[i], accepted=i < n_accepted)
        self.committed.extend(committed)

    def draft(self, max_tokens: int, after: Sequence[int] = ()) -> Draft:
        """Up to `max_tokens` tokens continuing committed + `after` (the chained n-gram part)."""
        out = Draft()
        self._buckets = []
        n = min(max_tokens, self.cfg.max_draft)
        if n <= 0:
            return out
        logits = self._sync([*self.committed, *after])
        rows, survival = [], 1.0
        for i in range(n):
            p = draft_probs(logits, self.sampling)
            local = int(np.argmax(p)) if self.sampling.greedy else sample(p, self.rng)
            conf, bucket = draft_confidence(self.calibrator, p, depth=0)  # one bucket set for every row
            survival *= conf
            if survival < self.cfg.min_survival and out.tokens:
                break
            token = local if self.kept is None else self.kept.to_target(local)
            out.tokens.append(token)
            out.confidence.append(conf)
            self._buckets.append(bucket)
            rows.append(p)
            if i + 1 < n:
                logits = self._forward([token])
        if not self.sampling.greedy:
            out.probs = spread_to_vocab(rows, self.kept, self.n_vocab)
        return out

    # -- internals -----------------------------------------------------------------------------
    def peek(self) -> tuple[int, float]:
        """The token the model would draft first after the committed sequence (its argmax,
        never a sample, so a chained drafter may choose on it without biasing sampling) and its
        probability. One forward at most; a draft() right after reuses it."""
        logits = self._sync(list(self.committed))
        p = draft_probs(logits, self.sampling)
        local = int(np.argmax(p))
        return (local if self.kept is None else self.kept.to_target(local)), float(p[local])

    def _sync(self, seq: list[int]) -> np.ndarray:
        """Bring the cache to seq[:-1] and return the logits after seq[-1]."""
        if self._logits is not None and self.fed == seq:
            return self._logits  # peek() has just computed them
        keep = min(common_prefix_length(self.fed, seq), len(seq) - 1)
        missing = seq[keep:]
        # a new prompt, or a backend this drafter has not used yet: prefill (it resets the
        # cache and reuses whatever prefix the backend itself still holds)
        if not self.fed or len(missing) > self.cfg.prefill_gap:
            self.backend.prefill(seq[:-1])
            self.fed = list(seq[:-1])
            missing = seq[-1:]
        elif keep < len(self.fed):
            self.backend.rollback(len(self.fed) - keep)
            del self.fed[keep:]
        return self._forward(missing)

    def _forward(self, tokens: list[int]) -> np.ndarray:
        logits = self.backend.forward(tokens)[-1]
        self.fed.extend(tokens)
        self.steps += 1
        self._logits = np.asarray(logits, dtype=np.float64)  # after fed[-1]
        return self._logits


FREE_LOOK_BELOW = 0.8  # default ask_below for a model whose look is free (hidden-state head)


class ChainedDrafter:
    """N-grams first; the model drafter fills in where they have nothing to say or, with
    `ask_below`, where they are unsure.

    Where the n-grams have no draft, the model drafts one token and the n-grams continue
    after it: measured offline along plain greedy outputs (scripts/chain_oracle.py), they
    continue better than a 4-layer distilled drafter, and for free. Replacing *unsure* n-gram
    tokens by the model's, or extending every n-gram draft with model tokens, lowered tau or
    cost more than it gave (SmolLM2, session 8).

    `ask_below` = P: where the n-grams' first token is estimated below P, look at the model's
    first token (one drafter forward, no draft). Agreement is evidence for the n-gram draft;
    on disagreement the part whose first token has more often been right in that situation
    drafts that token (a model win is a gap fill there). Verification always reveals the true
    first token, so both estimates learn from every look. Every choice uses the model's
    argmax, never its sample, so sampling stays exact.
    `sure` > 0 keeps only the n-gram prefix at least that confident and lets the model
    continue from there. A model with `free_look` (the hidden-state head: no cache to sync)
    is looked at wherever the n-grams' first token is below FREE_LOOK_BELOW unless told otherwise.
    A model with `peek_chain` and depth > 1 competes with its argmax chain at a look and at a
    gap, the n-grams continuing after it. Given the loop's `cost` curve, the two compare by
    expected tokens per unit of verify time at their best cut (cost.best_rate); without it, by
    expected accepted tokens. The curve matters where verifying one more row is dear: on a
    2-core CPU t(5)/t(1) is ~2.0 against t(4)/t(1) ~1.4, so an n-gram draft's long tail is
    worth less than its count says and a short, surer head chain can be the better draft."""

    def __init__(self, ngram: NgramDrafter, model: ModelDrafter, sure: float | None = None,
                 ask_below: float | None = None, cost: CostCurve | None = None) -> None:
        if sure is not None and ask_below is not None:
            raise TascError("a chained drafter takes `sure` or `ask_below`, not both")
        if ask_below is None and sure is None and getattr(model, "free_look", False):
            # a look that reads no drafter cache is cheap, but where the n-grams are sure the
            # model's disagreements were more often wrong than right: looking only below 0.8
            # gave fewer target forwards *and* fewer looks than looking always on all four
            # tasks (SmolLM2 ONNX int8, 50 rows each, docs/results/hidden-head/, session 15)
            ask_below = FREE_LOOK_BELOW
        self.ngram, self.model, self.sure, self.ask_below = ngram, model, sure, ask_below
        self.cost = cost
        self.looks = AcceptanceCalibrator(prior_strength=4.0)  # P(first token right | look)
        self._split = 0  # tokens of the last draft that came from the n-grams
        self._looked: tuple | None = None  # (n-gram key, its token, model key, its token)
        self._model_first = 0  # the last draft is this many model tokens + n-grams after them
        # a model that drafts several tokens from one look (a hidden head of depth > 1)
        self._deep = getattr(model, "max_depth", 1) > 1 and hasattr(model, "peek_chain")

    @property
    def steps(self) -> int:
        return self.model.steps

    def begin(self, prompt: Sequence[int]) -> None:
        self.ngram.begin(prompt)
        self.model.begin(prompt)

    def cold(self) -> None:
        self.model.cold()

    def draft(self, max_tokens: int) -> Draft:
        self._looked, self._model_first, self._split = None, 0, 0
        if max_tokens <= 0:
            return Draft()
        a = self.ngram.draft(max_tokens)
        if self.sure is not None:
            k = 0
            while k < len(a.tokens) and a.confidence[k] >= self.sure:
                k += 1
            a = a.truncate(k)
        self._split = len(a.tokens)
        if self.sure is None:
            if not a.tokens:  # the n-grams have nothing here
                mine = self.model.peek()[0]
                return self._fill(max_tokens, mine) if mine >= 0 else a
            if self.ask_below is None or a.confidence[0] >= self.ask_below:
                return a
            return self._look(a, max_tokens)
        if len(a.tokens) == max_tokens:
            return a
        return self._continue(a, max_tokens)

    def _look(self, a: Draft, max_tokens: int) -> Draft:
        mine, p = self.model.peek()
        if mine < 0:  # a model that cannot say anything here (a hidden head before its first state)
            return a
        agree = mine == a.tokens[0]
        key_a, key_b = ("ngram", agree, _decile(a.confidence[0])), ("model", agree, _decile(p))
        pa = self.looks.estimate(key_a, prior=a.confidence[0])
        pb = self.looks.estimate(key_b, prior=p)
        self._looked = (key_a, a.tokens[0], key_b, mine)
        if self._deep:  # the head's whole chain against the n-grams' draft
            theirs = self._worth([pa, *a.confidence[1:]], max_tokens)
            # its chain is worth at most that of pb then certain tokens: skip the head steps
            # where even that cannot win
            if self._worth([pb] + [1.0] * (min(self.model.max_depth, max_tokens) - 1), max_tokens) > theirs:
                chain = self.model.peek_chain(max_tokens)
                if self._worth([pb, *chain.confidence[1:]], max_tokens) > theirs:
                    return self._chain_then_ngrams(max_tokens, len(chain.tokens), pb)
            return Draft(a.tokens, [pa, *a.confidence[1:]], a.probs)
        if agree or pa >= pb:
            return Draft(a.tokens, [pa, *a.confidence[1:]], a.probs)
        return self._fill(max_tokens, mine, first_confidence=pb)

    def _fill(self, max_tokens: int, mine: int, first_confidence: float | None = None) -> Draft:
        """The model's token here, then the n-grams again after it (they continue better than
        the model, and for free); the model drafts on alone only where the n-grams have nothing
        after its argmax `mine` either. Decided on the argmax, never on a sample, so sampling
        stays exact; the model's token itself is its sample (from the peeked logits)."""
        after_mine = self.ngram.draft(max_tokens - 1, after=[mine])
        if self._deep:  # both start with `mine`: its chain against the n-grams after it
            # (the shortcut takes `mine` as certain on both sides: exact without a cost curve)
            theirs = self._worth([1.0, *after_mine.confidence], max_tokens)
            if self._worth([1.0] * min(self.model.max_depth, max_tokens), max_tokens) > theirs:  # else it cannot win
                chain = self.model.peek_chain(max_tokens)
                first = chain.confidence[0] if first_confidence is None else first_confidence
                if self._worth([first, *chain.confidence[1:]], max_tokens) > \
                        self._worth([first, *after_mine.confidence], max_tokens):
                    return self._chain_then_ngrams(max_tokens, len(chain.tokens), first)
        if max_tokens > 1 and not after_mine.tokens:
            b = self.model.draft(max_tokens)
            self._split = 0
            if first_confidence is not None and b.tokens:
                b.confidence[0] = first_confidence
            return b
        # greedy (and most samples) draw `mine` itself: its continuation is already there,
        # and it was the n-grams' last draft, so their calibration bookkeeping matches
        return self._chain_then_ngrams(max_tokens, 1, first_confidence, known=([mine], after_mine))

    def _chain_then_ngrams(self, max_tokens: int, n: int, first_confidence: float | None = None,
                           known: tuple[list[int], Draft] | None = None) -> Draft:
        """Up to n model tokens (greedy: the chain peeked at; sampling: drawn now), then the
        n-grams after them (`known`: their draft after a given model part, reused if the model
        drew exactly that). The choice was made on the argmax, so sampling stays exact."""
        b = self.model.draft(n)
        if not b.tokens:
            return b
        if known is not None and b.tokens == known[0]:
            rest = known[1]
        else:
            rest = self.ngram.draft(max_tokens - len(b.tokens), after=b.tokens) if len(b.tokens) < max_tokens else Draft()
        self._model_first, self._split = len(b.tokens), 0
        if first_confidence is None:
            first_confidence = b.confidence[0]
        probs = None
        if b.probs is not None:  # n-gram tokens are point masses
            probs = np.zeros((len(b.tokens) + len(rest.tokens), self.model.n_vocab))
            probs[: len(b.tokens)] = b.probs
            probs[np.arange(len(b.tokens), len(probs)), rest.tokens] = 1.0
        return Draft(b.tokens + rest.tokens, [first_confidence, *b.confidence[1:], *rest.confidence], probs)

    def _worth(self, confidence: list[float], room: int) -> float:
        """What a candidate draft is worth: tokens per verify time at its best cut (or fill, up
        to the loop's `room`: cost.best_rate), or without a cost curve its expected accepted
        tokens."""
        return best_rate(confidence, self.cost, room) if self.cost is not None else expected_accepted(confidence)

    def _continue(self, a: Draft, max_tokens: int) -> Draft:
        """`sure`: the model drafts after the n-gram part it keeps."""
        k = len(a.tokens)
        b = self.model.draft(max_tokens - k, after=a.tokens)
        probs = None
        if b.probs is not None:  # n-gram tokens are point masses
            head = np.zeros((k, self.model.n_vocab))
            head[np.arange(k), a.tokens] = 1.0
            probs = np.concatenate([head, b.probs])
        return Draft(a.tokens + b.tokens, a.confidence + b.confidence, probs)

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        if self._looked is not None and committed:  # committed[0] is the target's own token
            key_a, tok_a, key_b, tok_b = self._looked
            self.looks.observe(key_a, accepted=tok_a == committed[0])
            self.looks.observe(key_b, accepted=tok_b == committed[0])
        if self._model_first:  # the n-gram tokens were judged only if the model's all held
            m = self._model_first
            self.model.update(draft.truncate(m), min(n_accepted, m), committed)
            rest = Draft(draft.tokens[m:], draft.confidence[m:]) if n_accepted >= m else Draft()
            self.ngram.update(rest, max(n_accepted - m, 0), committed)
            return
        k = min(self._split, len(draft.tokens))
        self.ngram.update(draft.truncate(k), min(n_accepted, k), committed)
        tail = Draft(draft.tokens[k:], draft.confidence[k:])
        # the model's tokens were judged only if every n-gram token before them was accepted
        self.model.update(tail if n_accepted >= k else Draft(), max(n_accepted - k, 0), committed)


def expected_accepted(confidence: Sequence[float]) -> float:
    """Tokens a draft gets accepted on average: sum over i of P(tokens 1..i all accepted)."""
    total, survive = 0.0, 1.0
    for c in confidence:
        survive *= c
        total += survive
    return total


def draft_confidence(calibrator: AcceptanceCalibrator, p: np.ndarray, depth: int) -> tuple[float, tuple]:
    """(estimated acceptance, calibration bucket) of a model draft row drawn from `p`.

    Read from the distribution's peak, never from the token sampled from it: the loop cuts
    drafts and the drafter stops on these numbers, and a cut that depends on the sampled
    token changes which tokens reach verification, so sampled output would leave the target
    distribution (tests/test_vocabtrim.py measured p ~ 1e-44 when this used the sample's
    probability). Greedy drafts take the argmax, whose probability is the peak: unchanged."""
    peak = float(p.max())
    bucket = (depth, min(int(peak * 10), 9))
    return calibrator.estimate(bucket, prior=peak), bucket


def draft_probs(logits: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """What a model drafter proposes from: the plain softmax when greedy (only its argmax and
    that token's probability are used), the target's sampling transform otherwise (the q of
    speculative sampling must be the distribution the draft is drawn from)."""
    return _softmax(logits) if sampling.greedy else target_probs(logits, sampling)


def spread_to_vocab(rows: list[np.ndarray], kept: KeptVocab | None, n_vocab: int) -> np.ndarray:
    """Drafter distributions over the kept ids (or a full head) as rows over the target's
    vocabulary, zero elsewhere: what speculative sampling needs to stay exact."""
    full = np.zeros((len(rows), n_vocab))
    for i, p in enumerate(rows):
        if kept is None:
            full[i, : len(p)] = p
        else:
            full[i, kept.ids] = p
    return full


def _decile(p: float) -> int:
    return min(int(p * 10), 9)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()
