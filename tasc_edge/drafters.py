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

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from tasc_edge.decode import Draft, common_prefix_length
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
    # optimism of the acceptance estimates, in posterior std (AcceptanceCalibrator), for a table
    # an export did not calibrate; a calibrated one starts from what was measured instead
    explore: float = 1.0


CALIBRATION_WEIGHT = 50.0  # outcomes an export-measured bucket counts as, at most (NgramTable.calibration)


class AcceptanceCalibrator:
    """P(draft token accepted | bucket), Beta-binomial with a count-based prior.

    `explore` > 0 makes the estimate optimistic by that many posterior standard deviations, an
    optimism that fades as outcomes come in. A drafted token's outcome is learned only if the
    loop verifies it, and where the verify curve is steep a pessimistic prior never gets a
    draft verified, so it is never corrected: on Gemma 3 q4_0 (t(2)/t(1) = 2.2) the n-grams'
    most common bucket had prior 0.80 and was right 99% of the time in hindsight, and they
    never drafted at all. Optimism costs too, in drafts verified to learn they are wrong: on
    held-apart rows it was 1-10% slower than starting from the outcomes an export measured
    (scripts/policy_ab.py), so the n-gram drafter uses it only when its table carries no
    export calibration (replay_outcomes), and a model drafter, whose prior is its own
    probability, not at all. Nor does a calibrator that learns from every case
    (ChainedDrafter's looks: verification reveals the true token whatever was drafted)."""

    def __init__(self, prior_strength: float, explore: float = 0.0) -> None:
        self.prior_strength, self.explore = prior_strength, explore
        self.seen: dict[tuple, list[int]] = {}  # bucket -> [accepted, total]

    def estimate(self, bucket: tuple, prior: float) -> float:
        acc, n = self.seen.get(bucket, (0, 0))
        weight = n + self.prior_strength
        mean = (acc + self.prior_strength * prior) / weight
        if not self.explore:
            return mean
        return min(1.0, mean + self.explore * math.sqrt(mean * (1.0 - mean) / (weight + 1.0)))

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
        calibration = (task.calibration if task is not None else None) or {}
        self.calibrator = AcceptanceCalibrator(  # kept across prompts
            self.cfg.prior_strength, 0.0 if calibration else self.cfg.explore)
        for bucket, (right, judged) in calibration.items():
            # what the export measured, worth at most CALIBRATION_WEIGHT outcomes: enough to
            # start drafting where the prior would not, little enough to follow this run
            scale = min(1.0, CALIBRATION_WEIGHT / judged)
            self.calibrator.seen[bucket] = [right * scale, judged * scale]
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


def replay_outcomes(table: NgramTable, runs: Iterable[tuple[Sequence[int], Sequence[int]]],
                    max_draft: int = 12) -> dict[tuple, tuple[int, int]]:
    """Per bucket, (right, judged) of what a TASC-spec drafter on `table` would have drafted
    along known greedy outputs, given as (prompt, output) pairs. From every position it drafts
    up to `max_draft` tokens (no survival cut) and each token is judged until the first that
    differs from the output, as verification judges them. The export calibrates the drafter's
    acceptance estimates this way on the target's own generations, each replayed against a
    table that never saw it: the prior alone (0.8 x the mixture's peak) is far too low where
    the target repeats its own phrasing - on Gemma 3 q4_0 e2e_nlg the commonest bucket had
    prior 0.80 and was right 99% of the time."""
    drafter = NgramDrafter(table, NgramDraftConfig(max_order=table.max_order, min_survival=0.0))
    drafter.calibrator.seen.clear()  # count only this replay, not what the table may carry
    for prompt, output in runs:
        drafter.begin(prompt)
        for i in range(len(output)):
            draft = drafter.draft(max_draft)
            # the drafter's own update judges as the loop does: up to the first rejection
            drafter.update(draft, common_prefix_length(draft.tokens, output[i:]), [output[i]])
    return {b: (r, n) for b, (r, n) in drafter.calibrator.seen.items()}


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
