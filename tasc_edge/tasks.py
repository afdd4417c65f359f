"""Tasks as JSONL: one object per line with `id`, `prompt`, `output` (the shared datasets' schema).

A task is a directory with `train.jsonl` (its outputs build the n-gram table) and `test.jsonl`
(prompts to generate for), or the built-in `demo` task shipped in the package. Errors name the
file and line so a user can fix the input; nothing is ever written back to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from tasc_edge.errors import TascError
from tasc_edge.ngram import NgramTable

REQUIRED_FIELDS = ("id", "prompt", "output")
MAX_LINE_BYTES = 16 << 20  # one JSONL row beyond 16 MiB is a broken file, not a prompt


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str
    output: str


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[Row, ...]
    test: tuple[Row, ...]


def read_jsonl(path: Path) -> list[Row]:
    rows: list[Row] = []
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise TascError(f"{path}:{lineno}: line is {len(raw)} bytes, over the "
                                    f"{MAX_LINE_BYTES}-byte limit for one row")
                if not raw.strip():
                    continue
                rows.append(_parse_row(path, lineno, raw))
    except FileNotFoundError as e:
        raise TascError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise TascError(f"{path}: is a directory, expected a .jsonl file") from e
    return rows


def _parse_row(path: Path, lineno: int, raw: bytes) -> Row:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TascError(f"{path}:{lineno}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TascError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(obj, dict):
        raise TascError(f"{path}:{lineno}: expected a JSON object with {', '.join(REQUIRED_FIELDS)}")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise TascError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
    bad = [k for k in ("prompt", "output") if not isinstance(obj[k], str)]
    if bad:
        raise TascError(f"{path}:{lineno}: field(s) {', '.join(bad)} must be strings")
    return Row(str(obj["id"]), obj["prompt"], obj["output"])


def load_task(spec: str | Path) -> Task:
    """`demo`, a task directory (train.jsonl + test.jsonl), or a test .jsonl with a sibling
    train.jsonl."""
    if str(spec) == "demo":
        root = resources.files("tasc_edge") / "data" / "demo"
        with resources.as_file(root) as d:
            return Task("demo", tuple(read_jsonl(d / "train.jsonl")), tuple(read_jsonl(d / "test.jsonl")))
    path = Path(spec)
    if path.is_dir():
        train, test = path / "train.jsonl", path / "test.jsonl"
    elif path.suffix == ".jsonl":
        train, test = path.with_name("train.jsonl"), path
        if train == test:
            raise TascError(f"{path}: a train file alone has no test prompts; pass the task directory")
    else:
        raise TascError(f"task {spec!r} not found: give `demo`, a directory with train.jsonl and "
                        "test.jsonl, or a test .jsonl file")
    for p in (train, test):
        if not p.is_file():
            raise TascError(f"{p}: file not found (a task directory holds train.jsonl and test.jsonl)")
    task = Task(path.name if path.is_dir() else path.parent.name,
                tuple(read_jsonl(train)), tuple(read_jsonl(test)))
    if not task.test:
        raise TascError(f"{test}: no rows")
    return task


def end_of_turn_token(render: Callable[[list[dict], bool], list[int]],
                      stop_tokens: frozenset[int]) -> int | None:
    """The token that closes an assistant turn in a chat template (appended to corpus outputs
    so the drafter can propose stopping): the first end-of-generation token after the
    assistant's text in a rendered short exchange; None if the template shows none.
    `render(messages, add_generation_prompt)` returns the template's token ids."""
    ids = render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], False)
    prefix = len(render([{"role": "user", "content": "a"}], True))
    return next((t for t in ids[prefix:] if t in stop_tokens), None)


def task_sequences(outputs: Sequence[str], tokenize: Callable[[str], list[int]],
                   end_token: int) -> list[list[int]]:
    """Output texts as token ids of the *target's* tokenizer, each ending with the end-of-turn
    token so the drafter can also propose stopping."""
    texts = [o for o in outputs if o.strip()]
    if not texts:
        raise TascError("empty corpus: the task has no non-empty `output` to build the n-gram "
                        "table from")
    return [[*tokenize(t), end_token] for t in texts]


def build_task_table(outputs: Sequence[str], tokenize: Callable[[str], list[int]],
                     end_token: int, tokenizer_hash: str, max_order: int = 4) -> NgramTable:
    """Task n-gram table from output texts (see task_sequences)."""
    return NgramTable.build(task_sequences(outputs, tokenize, end_token), tokenizer_hash, max_order)
