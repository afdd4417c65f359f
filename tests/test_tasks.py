"""JSONL task loading: every kind of bad line names the file and line; the demo task ships."""

import json
import re

import pytest

from tasc_edge.errors import TascError, require
from tasc_edge.tasks import build_task_table, load_task, read_jsonl


def write(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines))
    return path


GOOD = json.dumps({"id": "a", "prompt": "p", "output": "o"})


@pytest.mark.parametrize("bad,message", [
    ('{"id": "b", "prompt": "p", "output": ', "malformed JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ('{"id": "b", "prompt": "p"}', "missing field(s) output"),
    ('{"id": "b", "prompt": 3, "output": "o"}', "must be strings"),
    (b'{"id": "b", "prompt": "\xff\xfe", "output": "o"}\n', "not UTF-8"),
])
def test_bad_line_is_reported_with_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "t.jsonl", [GOOD, "", bad])
    before = path.read_bytes()
    with pytest.raises(TascError, match=re.escape(message)) as e:
        read_jsonl(path)
    assert f"{path}:3:" in str(e.value)
    assert path.read_bytes() == before  # the input is never touched


def test_blank_lines_are_skipped(tmp_path):
    assert len(read_jsonl(write(tmp_path / "t.jsonl", ["", GOOD, "  ", GOOD]))) == 2


def test_task_dir_and_file_forms(tmp_path):
    write(tmp_path / "train.jsonl", [GOOD])
    write(tmp_path / "test.jsonl", [GOOD, GOOD])
    assert len(load_task(tmp_path).test) == 2
    assert len(load_task(tmp_path / "test.jsonl").train) == 1
    with pytest.raises(TascError, match="train file alone"):
        load_task(tmp_path / "train.jsonl")
    with pytest.raises(TascError, match="not found"):
        load_task(tmp_path / "nope")


def test_demo_task_ships_with_the_package():
    task = load_task("demo")
    assert len(task.train) >= 100 and len(task.test) >= 10
    assert all(json.loads(r.output)["drink"] for r in task.test)


def test_empty_corpus():
    with pytest.raises(TascError, match="empty corpus"):
        build_task_table(["", "  "], lambda s: [1, 2], 0, "tok")


def test_missing_extra_names_it():
    with pytest.raises(TascError, match=r"pip install 'tasc-edge\[runtime\]'"):
        require("surely_not_a_module_xyz", "runtime")
