"""The CLI end to end on a tiny GGUF: exact output, the JSON summary, and one clear error line
(exit code 2) for each kind of bad input, with the inputs left untouched."""

import json
import re
import subprocess
import sys

import pytest

from tasc_edge.cli import main
from tasc_edge.ngram import NgramTable
from tiny_gguf import write_tiny_gguf

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", seed=5)


@pytest.fixture
def task(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"the {w} coffee order", "output": f"{{\"drink\": \"{w}\"}}"}
            for i, w in enumerate(["large", "small", "milk", "json", "two", "hello"])]
    d = tmp_path / "task"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return d


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_summary_and_is_exact(model, task, tmp_path, capsys):
    summary = tmp_path / "s.json"
    code, out, err = run_cli(["run", "--model", str(model), "--task", str(task), "--n-ctx", "256",
                              "--max-new-tokens", "24", "--json", str(summary)], capsys)
    assert code == 0, err
    data = json.loads(summary.read_text())
    for key in ("rows", "identical_rows", "speedup_median", "tau_mean", "tokens_per_s_plain",
                "tokens_per_s_method"):
        assert key in data
    assert data["rows"] == 3 and data["identical_rows"] == 3
    assert "| task | method |" in out


def test_sampling_run(model, task, capsys):
    code, out, err = run_cli(["run", "--model", str(model), "--task", str(task), "--n-ctx", "256",
                              "--max-new-tokens", "16", "--temperature", "0.8", "--top-p", "0.9",
                              "--seed", "3"], capsys)
    assert code == 0, err
    assert "n/a (sampling)" in out


def test_malformed_jsonl_line(model, task, capsys):
    test = task / "test.jsonl"
    test.write_text(test.read_text() + '{"id": "x", "prompt": \n')
    before = test.read_bytes()
    code, _, err = run_cli(["run", "--model", str(model), "--task", str(task)], capsys)
    assert code == 2
    assert f"{test}:4: malformed JSON" in err and len(err.strip().splitlines()) == 1
    assert test.read_bytes() == before


def test_empty_corpus(model, task, capsys):
    (task / "train.jsonl").write_text(json.dumps({"id": "a", "prompt": "p", "output": ""}) + "\n")
    code, _, err = run_cli(["run", "--model", str(model), "--task", str(task)], capsys)
    assert code == 2 and "empty corpus" in err


def test_prompt_longer_than_context(model, task, capsys):
    (task / "test.jsonl").write_text(json.dumps({"id": "a", "prompt": "coffee " * 400, "output": "o"}) + "\n")
    code, _, err = run_cli(["run", "--model", str(model), "--task", str(task), "--n-ctx", "256"], capsys)
    assert code == 2 and "but the context holds 256" in err and "--n-ctx" in err


def test_table_from_another_tokenizer(model, task, tmp_path, capsys):
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=5, extra_tokens=["▁other"])
    table = tmp_path / "t.npz"
    code, _, err = run_cli(["export", "--format", "tables", "--model", str(other), "--task", str(task), "--out", str(table)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["run", "--model", str(model), "--task", str(task), "--table", str(table)], capsys)
    assert code == 2 and "rebuild the table with this model" in err


def test_export_generated_corpus_resumes(model, task, tmp_path, capsys):
    out = tmp_path / "gen.npz"
    args = ["export", "--format", "tables", "--model", str(model), "--task", str(task), "--corpus", "generated",
            "--max-new-tokens", "12", "--out", str(out)]
    assert run_cli(args, capsys)[0] == 0
    gen = tmp_path / "gen.npz.generated.jsonl"
    lines = gen.read_text().splitlines()
    assert len(lines) == 6
    # simulate an interrupt after 2 rows, the third cut mid-line: the re-run redoes only the rest
    gen.unlink()
    partial = tmp_path / "gen.npz.generated.jsonl.partial"
    partial.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    out.unlink()
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "resuming: 2 of 6" in stdout
    assert [json.loads(x)["tokens"] for x in gen.read_text().splitlines() if x.startswith("{\"id")][-1] == \
        json.loads(lines[-1])["tokens"]
    assert not partial.exists() and out.is_file()
    # a smaller --train-limit first, then the full split: the re-run generates only the rest
    # and the corpus file ends with every row once (it used to keep the first file and leave
    # the new rows in a .partial that every later run regenerated)
    gen.unlink()
    assert run_cli(args + ["--train-limit", "2"], capsys)[0] == 0
    assert len(gen.read_text().splitlines()) == 2
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and "generated 4/4" in stdout, err
    assert sorted(gen.read_text().splitlines()) == sorted(lines) and not partial.exists()
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and not re.search(r"generated \d+/", stdout)
    # the drafter's calibration, replayed along the generations: every judged token counted
    calibration = NgramTable.load(out).calibration
    assert calibration and all(0 <= r <= n for r, n in calibration.values()) and "calibrated the drafter" in stdout


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "tasc_edge.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "export" in r.stdout


@pytest.mark.parametrize("depth", ["0", "two", ","])
def test_bad_hidden_head_depth_is_refused_before_any_work(model, task, tmp_path, capsys, depth):
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "--model", str(model), "--task", str(task), "--out", str(out),
                            "--hidden-head", "64", "--hidden-head-depth", depth], capsys)
    assert code == 2 and "--hidden-head-depth" in err and "depths of 1 or more" in err
    assert not out.exists()


def test_chain_help_states_the_hidden_head_default():
    """The help writes FREE_LOOK_BELOW out (the CLI imports nothing heavy at start): pin it."""
    from tasc_edge.cli import _CHAIN_HELP
    from tasc_edge.model_drafter import FREE_LOOK_BELOW

    assert f"looked at below {FREE_LOOK_BELOW})" in _CHAIN_HELP
