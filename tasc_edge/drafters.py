"""N-gram drafters: context-only prompt lookup, and TASC-spec (task corpus + live context).

Drafting goes one token at a time. For the current suffix each source (the live context, and
the task table if any) gives its longest-match continuation counts; the two are mixed with
weights that grow geometrically with the matched length, so the longer match dominates
(longest-match backoff across both) while equal-length evidence from both sources adds up.

How far to draft is decided from *calibrated* acceptance estimates: every drafted token falls
into a bucket (matched length in each source, how peaked the mixture is) and we keep a
Beta-binomial estimate of P(accepted | bucket) learned from verification outcomes as we go.
The loop turns those estimates into a draft length with the measured cost curve
(cost.best_draft_length), so a drafter that is unsure simply proposes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tasc_edge.decode import Draft
from tasc_edge.errors import TascError
from tasc_edge.ngram import ContextNgrams, NgramTable


@dataclass(frozen=True)
class NgramDraftConfig:
    max_order: int = 4  # n-gram length; contexts of 1..max_order-1 tokens
    context_weight: float = 1.0
    task_weight: float = 1.0
    order_base: float = 4.0  # each extra matched token multiplies a source's weight by this
    top_n: int = 4  # continuations per source that enter the mixture
    prior_strength: float = 4.0  # pseudo-observations behind the count-based prior
    min_survival: float = 0.05  # stop drafting once P(all drafts so far accepted) drops below


class AcceptanceCalibrator:
    """P(draft token accepted | bucket), Beta-binomial with a count-based prior."""

    def __init__(self, prior_strength: float) -> None:
        self.prior_strength = prior_strength
        self.seen: dict[tuple, list[int]] = {}  # bucket -> [accepted, total]

    def estimate(self, bucket: tuple, prior: float) -> float:
        acc, n = self.seen.get(bucket, (0, 0))
        return (acc + self.prior_strength * prior) / (n + self.prior_strength)

    def observe(self, bucket: tuple, accepted: bool) -> None:
        stat = self.seen.setdefault(bucket, [0, 0])
        stat[0] += int(accepted)
        stat[1] += 1


def _bucket(k_context: int, k_task: int, mix_p: float) -> tuple[int, int, int]:
    peak = 0 if mix_p < 0.5 else 1 if mix_p < 0.8 else 2 if mix_p < 0.95 else 3
    return min(k_context, 3), min(k_task, 3), peak


class NgramDrafter:
    """TASC-spec when given a task table; context-only prompt lookup when `task` is None."""

    def __init__(self, task: NgramTable | None = None,
                 config: NgramDraftConfig | None = None) -> None:
        self.cfg = config or NgramDraftConfig()
        if task is not None and task.max_order < self.cfg.max_order:
            self.cfg = NgramDraftConfig(**{**self.cfg.__dict__, "max_order": task.max_order})
        self.task = task
        self.calibrator = AcceptanceCalibrator(self.cfg.prior_strength)  # kept across prompts
        self.context = ContextNgrams(self.cfg.max_order)
        self._buckets: list[tuple] = []

    def begin(self, prompt: Sequence[int]) -> None:
        self.context = ContextNgrams(self.cfg.max_order)
        self.context.extend(prompt)

    def draft(self, max_tokens: int, after: Sequence[int] = ()) -> Draft:
        """Up to `max_tokens` tokens continuing the context + `after` (a chained part's tokens)."""
        n = self.cfg.max_order - 1
        tail = [*self.context.tokens[-n:], *after][-n:]
        out = Draft()
        self._buckets = []
        survival = 1.0
        for _ in range(max_tokens):
            guess = self._predict(tail)
            if guess is None:
                break
            token, mix_p, bucket = guess
            p = self.calibrator.estimate(bucket, prior=mix_p * 0.8)
            survival *= p
            if survival < self.cfg.min_survival:
                break
            out.tokens.append(token)
            out.confidence.append(p)
            self._buckets.append(bucket)
            tail = (tail + [token])[-n:]
        return out

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        # Outcomes are known up to the first rejection; later drafts were never judged.
        judged = min(len(draft.tokens), n_accepted + 1)
        for i in range(judged):
            self.calibrator.observe(self._buckets[i], accepted=i < n_accepted)
        self.context.extend(committed)

    def _predict(self, tail: list[int]) -> tuple[int, float, tuple] | None:
        k_ctx, from_ctx = self.context.lookup(tail)
        k_task, from_task = (0, None) if self.task is None else self.task.lookup(tail)
        scores: dict[int, float] = {}
        weight_sum = 0.0
        for k, cont, w in ((k_ctx, from_ctx, self.cfg.context_weight),
                           (k_task, from_task, self.cfg.task_weight)):
            if cont is None:
                continue
            w *= self.cfg.order_base ** k
            weight_sum += w
            top = min(self.cfg.top_n, len(cont.tokens))
            for tok, cnt in zip(cont.tokens[:top].tolist(), cont.counts[:top].tolist()):
                scores[tok] = scores.get(tok, 0.0) + w * cnt / cont.total
        if not scores:
            return None
        token = max(scores, key=scores.__getitem__)
        mix_p = scores[token] / weight_sum
        return token, mix_p, _bucket(k_ctx, k_task, mix_p)


METHODS = ("plain", "pld", "tasc-spec")


def make_drafter(method: str, table: NgramTable | None,
                 config: NgramDraftConfig | None = None) -> NgramDrafter | None:
    """plain: no drafter; pld: context-only lookup; tasc-spec: task table + context."""
    if method == "plain":
        return None
    if method == "pld":
        return NgramDrafter(None, config)
    if method == "tasc-spec":
        if table is None:
            raise TascError("tasc-spec needs a task n-gram table")
        return NgramDrafter(table, config)
    raise TascError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
