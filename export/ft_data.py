"""Inputs shared by the TASC-ft steps: the HF checkpoint to start from and the task's rows,
rendered exactly as the runtime renders them (chat template, output, end of turn)."""

from __future__ import annotations

import json
from pathlib import Path

from tasc_edge.errors import TascError
from tasc_edge.tasks import Row, load_task


def hf_source(model: str | None, work: Path, log=print) -> str:
    """An HF checkpoint folder for `model`: the folder itself, or a GGUF (default: the packaged
    SmolLM2) loaded into torch once and staged in `work`. A staged checkpoint records its GGUF
    in base.json: the GGUF exporter copies that file's metadata (see export/gguf_write.py)."""
    from tasc_edge.export.bundle import _hf_checkpoint
    from tasc_edge.files import atomic_write_text, sha256_file
    from tasc_edge.runtime.models import PACKAGED_MODELS, default_model, packaged_gguf

    source = Path(model) if model else default_model()
    if model in PACKAGED_MODELS:
        source = packaged_gguf(PACKAGED_MODELS[model])
    if not source.exists():
        raise TascError(f"model not found: {source}")
    if source.is_dir():
        return str(_hf_checkpoint(source, work, log))
    work.mkdir(parents=True, exist_ok=True)
    staged = _hf_checkpoint(source, work, log)
    if not (staged / "base.json").is_file():
        atomic_write_text(staged / "base.json", json.dumps(
            {"gguf": str(source.resolve()), "sha256": sha256_file(source)}) + "\n")
    return str(staged)


def train_rows(task: str, limit: int | None) -> list[Row]:
    rows = [r for r in load_task(task).train if r.output]
    if not rows:
        raise TascError(f"{task}: no train rows with an output")
    return rows[:limit] if limit else rows


def test_rows(task: str, limit: int | None) -> list[Row]:
    rows = load_task(task).test
    return rows[:limit] if limit else rows


def encode_example(tok, row: Row, max_len: int) -> tuple[list[int], int] | None:
    """(token ids, prompt length) for the chat-rendered prompt + output + end of turn, as the
    runtime would see them; None when it does not fit max_len (never silently truncated)."""
    text = tok.apply_chat_template([{"role": "user", "content": row.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    eot = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    ids = prompt + tok(row.output, add_special_tokens=False)["input_ids"] + [eot]
    return (ids, len(prompt)) if len(ids) <= max_len else None
