"""Task n-gram tables for a target model, from reference outputs and/or its own generations.

The base model's outputs can drift far from a dataset's references (it answers in its own
words, formats, loops), and a drafter predicts the *model*, not the reference. So besides the
reference outputs we can count the target's own greedy generations on the train prompts.
Generating is slow, so it is resumable: each finished row is appended (and flushed) to
`<out>.generated.jsonl.partial`; a re-run skips the rows already there, and the rows are folded
into `<out>.generated.jsonl` only when every row is done (a later run with more train rows
extends that file the same way).

With generations the table also carries the drafter's calibration: each generation replayed
against a table built without it (k-fold), counting per evidence bucket how often the drafted
token was the target's (drafters.replay_outcomes). The drafter starts from these instead of
its generic prior, which on a steep verify curve is too low to ever draft.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tasc_edge.cost import measure_cost_curve
from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import make_drafter, replay_outcomes
from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_text
from tasc_edge.ngram import NgramTable
from tasc_edge.runtime.llama_backend import LlamaCppBackend
from tasc_edge.runtime.models import resolve_model
from tasc_edge.tasks import load_task, task_sequences


@dataclass
class ExportTablesConfig:
    task: str
    out: str
    corpus: str = "reference"  # reference | generated | both
    train_limit: int | None = None
    max_new_tokens: int = 160
    max_order: int = 4
    model: str | None = None
    quant: str = "q4_0"
    n_ctx: int = 4096
    threads: int | None = None


def export_tables(cfg: ExportTablesConfig, log=print) -> NgramTable:
    """Tables alone (for `tasc-edge bench --tables`), on the GGUF target."""
    with LlamaCppBackend(resolve_model(cfg.model, cfg.quant), n_ctx=cfg.n_ctx,
                         n_threads=cfg.threads) as backend:
        return build_task_table(backend, cfg, Path(cfg.out), log)


def build_task_table(backend, cfg: ExportTablesConfig, out: Path, log=print) -> NgramTable:
    """The task table for `backend`'s tokenizer, saved atomically to `out` (.npz). Any backend
    with tokenize / chat_prompt / end_of_turn and the decode protocol will do."""
    if cfg.corpus not in ("reference", "generated", "both"):
        raise TascError(f"unknown corpus {cfg.corpus!r}")
    task = load_task(cfg.task)
    # tokenized once: counted for the reference table that speeds up generation, and kept
    # as corpus sequences when the reference outputs are part of the export
    ref_seqs = task_sequences([r.output for r in task.train], backend.tokenize, backend.end_of_turn())
    reference = NgramTable.build(ref_seqs, backend.tokenizer_hash, cfg.max_order)
    references = ref_seqs if cfg.corpus in ("reference", "both") else []
    generated: list[tuple] = []  # (train row, the target's tokens for it)
    if cfg.corpus in ("generated", "both"):
        rows = task.train[: cfg.train_limit] if cfg.train_limit else task.train
        generated = generated_corpus(backend, rows, reference, cfg, out, log)
    table = NgramTable.build(references + [ids for _, ids in generated], backend.tokenizer_hash, cfg.max_order)
    if len(generated) >= 2:
        table.calibration = calibrate(backend, generated, references, cfg, log)
    table.save(out)
    log(f"wrote {out}: {table.n_sequences} sequences, {table.n_tokens} tokens, "
        f"{table.nbytes / 1e6:.2f} MB in memory, {out.stat().st_size / 1e6:.2f} MB on disk")
    return table


def generated_corpus(backend, rows, reference: NgramTable,
                     cfg: ExportTablesConfig, out: Path, log) -> list[list[int]]:
    final = out.with_name(out.name + ".generated.jsonl")
    partial = final.with_name(final.name + ".partial")
    # final: an earlier complete corpus (a re-run with a larger --train-limit extends it);
    # partial: rows generated since, appended and flushed one by one (an interrupt keeps them)
    done = _read_generated(final, backend.tokenizer_hash) if final.is_file() else {}
    if partial.is_file():
        _drop_cut_line(partial)
        done.update(_read_generated(partial, backend.tokenizer_hash))
        log(f"resuming: {len(done)} of {len(rows)} generations already in {final.name}(.partial)")
    todo = [r for r in rows if r.id not in done]
    if todo:
        # TASC-spec with the reference table: exact greedy output, just sooner
        drafter = make_drafter("tasc-spec", reference)
        gen_cfg = GenerateConfig(cfg.max_new_tokens, stop_tokens=backend.stop_tokens)
        curve = measure_cost_curve(backend, max_k=gen_cfg.max_draft + 1)
        end = backend.end_of_turn()  # renders the chat template: once, not per row
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        skipped = 0
        with open(partial, "a", encoding="utf-8") as f:
            for i, row in enumerate(todo, start=1):
                prompt = backend.chat_prompt(row.prompt)
                if len(prompt) + cfg.max_new_tokens > backend.n_ctx:
                    skipped += 1  # does not fit the context: leave it out, say so below
                    continue
                g = generate(backend, prompt, drafter, gen_cfg, curve)
                ids = g.tokens + ([end] if g.finish_reason == "stop" else [])
                f.write(json.dumps({"id": row.id, "tokens": ids, "output": backend.detokenize(g.tokens),
                                    "tokenizer_hash": backend.tokenizer_hash}) + "\n")
                f.flush()
                os.fsync(f.fileno())
                done[row.id] = ids
                if i % 10 == 0 or i == len(todo):
                    rate = i / (time.perf_counter() - start)
                    log(f"generated {i}/{len(todo)} ({rate:.2f} rows/s, "
                        f"ETA {(len(todo) - i) / rate:.0f} s)")
        if skipped:
            log(f"skipped {skipped} train prompts longer than the context ({backend.n_ctx} tokens "
                f"minus {cfg.max_new_tokens} to generate); raise --n-ctx to include them")
    if partial.is_file():  # complete: fold the new rows into the corpus file, atomically
        earlier = final.read_text(encoding="utf-8") if final.is_file() else ""
        atomic_write_text(final, earlier + partial.read_text(encoding="utf-8"))
        partial.unlink()
    return [(r, done[r.id]) for r in rows if r.id in done and len(done[r.id]) >= 2]


def calibrate(backend, generated: list[tuple], others: list[list[int]], cfg: ExportTablesConfig,
              log, folds: int = 4) -> dict[tuple, tuple[int, int]]:
    """Per drafter bucket, (right, judged) over the target's generations (row, ids), each fold
    replayed against a table of the other folds plus `others` (the rest of the corpus)."""
    folds = min(folds, len(generated))
    total: dict[tuple, list[int]] = {}
    for f in range(folds):
        rest = others + [ids for i, (_, ids) in enumerate(generated) if i % folds != f]
        table = NgramTable.build(rest, backend.tokenizer_hash, cfg.max_order)
        runs = [(backend.chat_prompt(row.prompt), ids) for i, (row, ids) in enumerate(generated) if i % folds == f]
        for bucket, (right, judged) in replay_outcomes(table, runs).items():
            stat = total.setdefault(bucket, [0, 0])
            stat[0] += right
            stat[1] += judged
    right, judged = sum(r for r, _ in total.values()), sum(n for _, n in total.values())
    log(f"calibrated the drafter on {len(generated)} generations ({folds}-fold): {judged} drafted "
        f"tokens judged, {right / max(judged, 1):.0%} right, {len(total)} buckets")
    return {b: (r, n) for b, (r, n) in total.items()}


def train_generations(backend, rows, ref_seqs: list[list[int]], cfg: ExportTablesConfig, table_path: Path,
                      log) -> dict[str, list[int]]:
    """The target's generations for `rows` by row id: the corpus the tables step wrote next to
    `table_path`, generated here (and saved there) for rows it lacks. `ref_seqs` are the
    task's tokenized reference outputs, whose table speeds that generation up."""
    generated_corpus(backend, rows, NgramTable.build(ref_seqs, backend.tokenizer_hash, cfg.max_order),
                     cfg, table_path, log)
    return _read_generated(table_path.with_name(table_path.name + ".generated.jsonl"), backend.tokenizer_hash)


def _drop_cut_line(path: Path) -> None:
    """An interrupt can leave the last line half-written; cut the file back to whole lines so
    the next append starts on a fresh line."""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)


def _read_generated(path: Path, tokenizer_hash: str) -> dict[str, list[int]]:
    done: dict[str, list[int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TascError(f"{path}:{lineno}: not a generated-corpus line ({e.msg}); delete "
                                "the file to regenerate") from e
            if obj.get("tokenizer_hash") != tokenizer_hash:
                raise TascError(f"{path}:{lineno}: generated with another tokenizer; delete the "
                                "file to regenerate with this model")
            done[obj["id"]] = obj["tokens"]
    return done
