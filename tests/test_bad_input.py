"""The bad-input matrix (docs/bad-input.md), one parametrised test through the real CLI on a
tiny GGUF: every case exits non-zero with one error line naming the fix, leaves its inputs
byte-for-byte untouched, and leaves no output that looks complete."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("llama_cpp")

from tasc_edge.cli import main  # noqa: E402
from tiny_gguf import write_tiny_gguf  # noqa: E402

ROWS = [{"id": f"r{i}", "prompt": f"the {w} coffee order", "output": f'{{"drink": "{w}"}}'}
        for i, w in enumerate(["large", "small", "milk", "json", "two", "hello"])]


@dataclass
class Env:
    root: Path
    model: Path
    task: Path
    bundle: Path
    monkeypatch: pytest.MonkeyPatch


@dataclass
class Case:
    id: str
    setup: Callable[[Env], list[str]]  # breaks something, returns the CLI arguments
    says: str  # words the one error line must contain
    code: int = 2
    incomplete: str | None = None  # a path that must not exist afterwards (relative to root)


def write_rows(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_args(e: Env, *extra: str) -> list[str]:
    return ["run", "--model", str(e.model), "--quant", "as-is", "--task", str(e.task), "--n-ctx", "256",
            "--max-new-tokens", "8", "--json", str(e.root / "summary.json"), *extra]


def bundle_args(e: Env) -> list[str]:
    return ["run", "--bundle", str(e.bundle), "--task", str(e.task), "--max-new-tokens", "8"]


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(e: Env, change) -> None:
    m = json.loads((e.bundle / "manifest.json").read_text())
    change(m)
    (e.bundle / "manifest.json").write_text(json.dumps(m))


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "tables/task.npz")


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def missing_llama(e: Env) -> list[str]:
    import sys

    e.monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an uninstalled package looks like
    return run_args(e)


def export_args(e: Env) -> list[str]:
    return ["export", "--format", "gguf", "--quant", "as-is", "--model", str(e.model), "--task", str(e.task),
            "--out", str(e.root / "new-bundle"), "--n-ctx", "256"]


CASES = [
    Case("malformed-jsonl", lambda e: (e.task.joinpath("test.jsonl").write_text('{"id": "x", "prompt": \n'),
                                       run_args(e))[1], "malformed JSON", incomplete="summary.json"),
    Case("empty-jsonl", lambda e: (e.task.joinpath("test.jsonl").write_text(""), run_args(e))[1], "no rows"),
    Case("huge-jsonl-line", lambda e: (e.task.joinpath("test.jsonl").write_text(
        json.dumps({"id": "x", "prompt": "a" * (17 << 20), "output": "o"}) + "\n"), run_args(e))[1],
         "byte limit for one row"),
    Case("non-utf8", lambda e: (e.task.joinpath("test.jsonl").write_bytes(b'{"id": "\xff"}\n'), run_args(e))[1],
         "not UTF-8"),
    Case("missing-field", lambda e: (write_rows(e.task / "test.jsonl", [{"id": "x", "prompt": "p"}]),
                                     run_args(e))[1], "missing field(s) output"),
    Case("empty-corpus", lambda e: (write_rows(e.task / "train.jsonl", [{"id": "a", "prompt": "p", "output": ""}]),
                                    run_args(e))[1], "empty corpus"),
    Case("table-of-another-tokenizer", lambda e: run_args(e, "--table", str(e.root / "other.npz")),
         "rebuild the table with this model"),
    Case("truncated-artifact", lambda e: ((e.bundle / "model.gguf").write_bytes(
        (e.bundle / "model.gguf").read_bytes()[:-100]), bundle_args(e))[1], "truncated or replaced"),
    Case("bit-flipped-artifact", lambda e: (flip_byte(e.bundle / "model.gguf", 5000), bundle_args(e))[1], "sha256"),
    Case("manifest-tampered", lambda e: (edit_manifest(e, lambda m: m["files"][0].update(sha256="0" * 64)),
                                         bundle_args(e))[1], "sha256"),
    Case("manifest-not-json", lambda e: ((e.bundle / "manifest.json").write_text("{not json"), bundle_args(e))[1],
         "not valid JSON"),
    Case("wrong-format-version", lambda e: (edit_manifest(e, lambda m: m.update(format_version=99)),
                                            bundle_args(e))[1], "format version 99"),
    Case("prompt-longer-than-context", lambda e: (write_rows(e.task / "test.jsonl", [
        {"id": "a", "prompt": "coffee " * 400, "output": "o"}]), run_args(e))[1], "--n-ctx"),
    Case("max-tokens-0", lambda e: run_args(e, "--max-new-tokens", "0"), "at least 1"),
    Case("unknown-device-profile", lambda e: ["report", "--bench", str(e.root / "bench.json"), "--device", "toaster"],
         "unknown device profile 'toaster'"),
    Case("missing-optional-extra", missing_llama, "pip install 'tasc-edge[runtime]'"),
    Case("disk-full-during-export", lambda e: (e.monkeypatch.setattr(
        "tasc_edge.export.bundle.build_task_table", no_space), export_args(e))[1], "No space left on device",
         incomplete="new-bundle/manifest.json"),
    Case("tables-with-two-tasks", lambda e: ["export", "--format", "tables", "--task", str(e.task), "--task",
                                              str(e.task), "--out", str(e.root / "t.npz")],
         "writes one table", incomplete="t.npz"),
    Case("ctrl-c-during-export", lambda e: (e.monkeypatch.setattr(
        "tasc_edge.export.bundle.build_task_table", interrupt), export_args(e))[1], "interrupted", code=130,
         incomplete="new-bundle/manifest.json"),
    Case("ctrl-c-during-bench", lambda e: (e.monkeypatch.setattr("tasc_edge.runtime.bench.run_method", interrupt),
                                           ["bench", "--model", str(e.model), "--quant", "as-is", "--data-root",
                                            str(e.task.parent), "--datasets", e.task.name, "--methods", "plain",
                                            "--limit", "2", "--n-ctx", "256", "--out", str(e.root / "bench-out"),
                                            "--no-plots"])[1], "interrupted", code=130),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = write_tiny_gguf(root / "tiny.gguf", seed=5)
    other = write_tiny_gguf(root / "other.gguf", seed=5, extra_tokens=["▁other"])
    task = root / "task"
    task.mkdir()
    write_rows(task / "train.jsonl", ROWS)
    write_rows(task / "test.jsonl", ROWS[:2])
    assert main(["export", "--format", "tables", "--model", str(other), "--quant", "as-is", "--task", str(task),
                 "--out", str(root / "other.npz")]) == 0
    assert main(["export", "--format", "gguf", "--quant", "as-is", "--model", str(model), "--task", str(task),
                 "--out", str(root / "bundle"), "--n-ctx", "256"]) == 0
    (root / "bench.json").write_text(json.dumps({"results": []}))
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base: Path, tmp_path: Path, monkeypatch, capsys):
    import shutil

    for name in ("tiny.gguf", "other.npz", "bench.json"):
        shutil.copy(base / name, tmp_path / name)
    shutil.copytree(base / "task", tmp_path / "task")
    shutil.copytree(base / "bundle", tmp_path / "bundle")
    env = Env(tmp_path, tmp_path / "tiny.gguf", tmp_path / "task", tmp_path / "bundle", monkeypatch)
    argv = case.setup(env)
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    monkeypatch.undo()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith("tasc-edge:"), err
    assert case.says in lines[0], lines[0]
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # inputs untouched
    if case.incomplete:
        assert not (tmp_path / case.incomplete).exists()


def test_docs_table_lists_every_case():
    doc = (Path(__file__).parent.parent / "docs" / "bad-input.md").read_text()
    for case in CASES:
        assert f"`{case.id}`" in doc, case.id
