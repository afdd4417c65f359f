"""Bundle step: VocabTrim drafters (calibrate, build + distill the drafter, export per K).

    bundle/drafter/embed.npy  ONNX: a brought drafter's own input table, shared by its variants
                           (a self-drafter's table is the target's: it reads bundle/embed.npy)
    bundle/drafter/full/   model.onnx + tokenizer files          (untrimmed head, if asked)
    bundle/drafter/k4096/  model.onnx + tokenizer files + kept.npz (head keeps 4096 target ids)
GGUF bundles get model.gguf (+ kept.npz) per variant instead, and drafter/embed.npy always
holds the trimmed variants' table (llama.cpp's view of it): see export/gguf_drafter.py.

Calibration sources (`--calib`, as in the paper): `target` = the target's own greedy outputs
on the train prompts (the tables step's generated corpus, made here if the tables did not
need it); `drafter` = the distilled drafter's greedy outputs (decoded by the runtime from its
exported full-head model, which is exported first for that); `reference` = the dataset's
outputs; `raw` = prompts + reference outputs. One kept list serves all tasks of the bundle
(the union of their calibration text). Stop tokens and the end-of-turn token are always kept.
Each finished piece is recorded in `.work/state.json`, so an interrupted export resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.errors import TascError
from tasc_edge.export.drafter import (DrafterConfig, build_self_drafter, distill, load_target,
                                      save_drafter, top1_agreement)
from tasc_edge.export.gguf_drafter import export_gguf_drafter, gguf_step_bytes
from tasc_edge.export.onnx import export_onnx, step_bytes
from tasc_edge.export.tables import train_generations
from tasc_edge.files import atomic_write_text
from tasc_edge.runtime.bundle import file_entry, open_model
from tasc_edge.runtime.onnx_backend import EMBED_FILE
from tasc_edge.tasks import load_task, task_sequences
from tasc_edge.vocab_trim import CALIB_SOURCES, KeptVocab, choose_kept, token_counts

# ONNX drafters take `inputs_embeds`: the table is one memory-mapped file for every variant
# instead of a copy inside each onnxruntime session (671 MB fp32 each for Gemma 3's 262k rows);
# a self-drafter's is the target's own embed.npy. Trimmed GGUF drafters take embeddings too.
DRAFTER_EMBED = f"drafter/{EMBED_FILE}"


def export_drafters(out: Path, work: Path, hf_dir, backend, tasks: list[str], tables_cfg,
                    dcfg: DrafterConfig, quant: str, state: dict, save_state, log,
                    fmt: str = "onnx") -> tuple[dict, list[dict]]:
    """(manifest["drafters"], file entries). `backend` is the bundle's target (tokenizer and
    generation); `hf_dir()` stages its torch checkpoint (only called when distilling). `fmt`:
    the bundle's format; GGUF drafters are written by export/gguf_drafter.py."""
    end = backend.end_of_turn()
    loaded = [(Path(t).name.removesuffix(".jsonl") or "task", load_task(t)) for t in tasks]
    prompts, generated, references = [], [], []
    for name, task in loaded:
        rows = task.train[: tables_cfg.train_limit] if tables_cfg.train_limit else task.train
        with_output = [r for r in task.train if r.output.strip()]  # what task_sequences keeps
        ref = task_sequences([r.output for r in with_output], backend.tokenize, end)
        ref_by_id = dict(zip((r.id for r in with_output), ref))  # tokenized once, reused below
        table_path = work / f"{name}.npz"
        gens = train_generations(backend, rows, ref, replace(tables_cfg, task=name), table_path, log)
        for r in rows:
            if r.id in gens and r.id in ref_by_id:
                prompts.append(backend.chat_prompt(r.prompt))
                generated.append(gens[r.id])
                references.append(ref_by_id[r.id])

    sources = {"target": generated, "reference": references,
               "raw": [p + r for p, r in zip(prompts, references)]}
    calibs = [c for c in dcfg.calib.split(",") if c]
    for calib in calibs:
        if calib not in CALIB_SOURCES:
            raise TascError(f"unknown --calib {calib!r}; choose target, drafter, reference or raw")
    always = {*backend.stop_tokens, end}
    ids = distill_ids(dcfg, sources, calibs, backend.n_vocab, backend.tokenizer_hash, always)

    # the drafter network, distilled once (untrimmed); trimming below only drops head rows
    drafter_dir = work / "drafter-hf"
    key = (f"{state.get('model')}|{dcfg.model}|{dcfg.layers}|{dcfg.distill_steps}|{dcfg.lr}|{dcfg.max_len}|"
           f"{len(prompts)}|{dcfg.distill_vocab}:{'full' if ids is None else len(ids)}")
    if state.get("drafter") != key or not (drafter_dir / ".complete").is_file():
        shutil.rmtree(drafter_dir, ignore_errors=True)
        hf = hf_dir()
        target = load_target(hf)
        drafter = load_target(Path(dcfg.model)) if dcfg.model else build_self_drafter(target, dcfg.layers)
        _check_same_vocab(drafter, target)
        seqs = [p + g for p, g in zip(prompts, generated)]
        stats = {"steps": 0}
        if dcfg.distill_steps > 0:
            stats = distill(drafter, target, seqs, dcfg, log, ids=ids)
        stats["top1_agreement"] = top1_agreement(drafter, target, seqs[:8], ids)
        log(f"drafter agrees with the target's top token on {stats['top1_agreement']:.0%} of "
            f"positions (first 8 calibration sequences{'' if ids is None else ', over the distilled rows'})")
        save_drafter(drafter, hf, drafter_dir)
        del target
        state.update({"drafter": key, "distill": stats})
        for k in [k for k in state if k.startswith("drafter:")]:
            del state[k]  # variants made from an older drafter
        save_state(state)

    model_file = "model.onnx" if fmt == "onnx" else "model.gguf"
    # GGUF "as-is" means the target as shipped; the drafter GGUF is written here in F16, so it
    # takes Q8_0 (the type of the head in the GGUFs shipped for SmolLM2 and Gemma 3)
    quant = "q8_0" if fmt == "gguf" and quant == "as-is" else quant

    def export_variant(variant: str, kept: KeptVocab | None, folder: Path) -> None:
        """One drafter model file (head trimmed to `kept`) in `folder`, unless already there."""
        vkey = (f"{fmt}|{key}|{quant}|{None if kept is None else (kept.calib, kept.k, kept.calib_tokens)}"
                f"|embed-{DRAFTER_EMBED}" + ("|scaled" if fmt == "gguf" else ""))
        if state.get(f"drafter:{variant}") == vkey and (folder / model_file).is_file():
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log(f"exporting drafter {variant} ({fmt} {quant})")
        if fmt == "onnx":
            export_onnx(drafter_dir, work / "drafter-onnx", folder, quant, log,
                        keep_rows=None if kept is None else kept.ids, embed_out=out / DRAFTER_EMBED,
                        embed_shared=out / EMBED_FILE)
        else:
            export_gguf_drafter(drafter_dir, out / model_file, work, folder, kept, quant,
                                out / DRAFTER_EMBED, log)
        if kept is not None:
            kept.save(folder / "kept.npz")
        state[f"drafter:{variant}"] = vkey
        save_state(state)

    if "drafter" in calibs:  # the drafter's own greedy outputs, from its exported full-head model
        full_dir = out / "drafter" / "full" if dcfg.untrimmed else work / "drafter-full"
        export_variant("full" if dcfg.untrimmed else "calib-full", None, full_dir)
        sources["drafter"] = drafter_generations(fmt, full_dir / model_file, prompts, key,
                                                 work / "drafter-generations.json",
                                                 tables_cfg.max_new_tokens, log,
                                                 out / _drafter_table(out) if fmt == "onnx" else None)
    variants: dict[str, KeptVocab | None] = {"full": None} if dcfg.untrimmed else {}
    for calib in calibs:  # variant names: k<K> for target calibration, k<K>-<calib> otherwise
        counts = token_counts(sources[calib], backend.n_vocab)
        suffix = "" if calib == "target" else f"-{calib}"
        for k in dcfg.top_k:
            variants[f"k{k}{suffix}"] = choose_kept(counts, backend.tokenizer_hash, calib, top_k=k, always=always)
        if not dcfg.top_k and dcfg.coverage is not None:
            kept = choose_kept(counts, backend.tokenizer_hash, calib, coverage=dcfg.coverage, always=always)
            variants[f"k{kept.k}{suffix}"] = kept

    weight_bytes = step_bytes if fmt == "onnx" else gguf_step_bytes
    target_bytes = weight_bytes(out / model_file)
    entries, files = {}, []
    for variant, kept in variants.items():
        folder = out / "drafter" / variant
        export_variant(variant, kept, folder)
        kept = KeptVocab.load(folder / "kept.npz") if (folder / "kept.npz").is_file() else None
        files += [file_entry(out, f, f"VocabTrim drafter {variant}") for f in sorted(folder.iterdir())
                  if f.is_file()]
        bytes_ = weight_bytes(folder / model_file)
        entries[variant] = {
            "dir": f"drafter/{variant}", "k": None if kept is None else kept.k,
            "coverage": 1.0 if kept is None else kept.coverage,
            "calib": None if kept is None else kept.calib,
            "calib_tokens": None if kept is None else kept.calib_tokens, "layers": dcfg.layers if not dcfg.model else None,
            "step_bytes": bytes_, "target_step_bytes": target_bytes, "c": bytes_ / target_bytes,
            "distill": state.get("distill"), "quant": quant}
        log(f"drafter {variant}: K={entries[variant]['k'] or backend.n_vocab}, coverage "
            f"{entries[variant]['coverage']:.3f}, {bytes_ / 1e6:.1f} MB read per step, c = {bytes_ / target_bytes:.3f}")
    if fmt == "onnx" and variants:
        embed = _drafter_table(out)
        for entry in entries.values():
            entry["embed"] = embed
        if embed == DRAFTER_EMBED:
            files.append(file_entry(out, out / DRAFTER_EMBED, "VocabTrim drafters' input embeddings "
                                    "(fp32), taken out of their ONNX graphs"))
    trimmed = [e for e in entries.values() if e["k"] is not None]
    if fmt == "gguf" and trimmed:
        for entry in trimmed:
            entry["embed"] = DRAFTER_EMBED
        files.append(file_entry(out, out / DRAFTER_EMBED, "trimmed VocabTrim drafters' input "
                                "embeddings (fp16, as llama.cpp's graph sees token rows)"))
    shutil.rmtree(work / "drafter-onnx", ignore_errors=True)
    return entries, files


def _drafter_table(out: Path) -> str:
    """The ONNX drafters' input table: drafter/embed.npy exists only when it is not the
    target's (export/onnx.py place_table drops it otherwise)."""
    return DRAFTER_EMBED if (out / DRAFTER_EMBED).is_file() else EMBED_FILE


def drafter_generations(fmt: str, model_path: Path, prompts: list[list[int]], key: str, cache: Path,
                        max_new: int, log, embed: Path | None = None) -> list[list[int]]:
    """The distilled drafter's greedy outputs on the calibration prompts (calibration source
    `drafter`), decoded by the runtime from its exported full-head model: on this CPU
    transformers' generate() spent ~25 s per prompt, the exported drafter a fraction of that.
    Kept in `cache` for this drafter (`key`), so a re-run does not decode them again."""
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and len(saved["outputs"]) == len(prompts):
            return saved["outputs"]
    outs = []
    start = time.perf_counter()
    if embed is not None:
        from tasc_edge.runtime.onnx_backend import OnnxBackend

        opened = OnnxBackend(model_path, input_embeddings=np.load(embed, mmap_mode="r"))
    else:
        opened = open_model(fmt, model_path)
    with opened as backend:
        cfg = GenerateConfig(max_new, stop_tokens=backend.stop_tokens)
        for i, p in enumerate(prompts, start=1):
            outs.append(generate(backend, p, None, cfg).tokens if len(p) + max_new <= backend.n_ctx else [])
            if i % 50 == 0 or i == len(prompts):
                rate = i / (time.perf_counter() - start)
                log(f"drafter generations {i}/{len(prompts)} (ETA {(len(prompts) - i) / rate:.0f} s)")
    atomic_write_text(cache, json.dumps({"key": key, "outputs": outs}))
    return outs


def distill_ids(dcfg: DrafterConfig, sources: dict, calibs: list[str], n_vocab: int,
                tokenizer_hash: str, always: set[int]) -> np.ndarray | None:
    """Target ids the distillation's KL covers: the union of the largest kept set of every
    calibration source of this export (the drafter's own generations do not exist before it is
    distilled, so that source counts the target's), or None for the full vocabulary."""
    if dcfg.distill_vocab not in ("kept", "full"):
        raise TascError(f"unknown --distill-vocab {dcfg.distill_vocab!r}; choose kept or full")
    if dcfg.distill_vocab == "full" or (not dcfg.top_k and dcfg.coverage is None):
        return None
    ids = np.fromiter(always, dtype=np.int64)
    for calib in dict.fromkeys("target" if c == "drafter" else c for c in calibs):
        kept = choose_kept(token_counts(sources[calib], n_vocab), tokenizer_hash, calib,
                           top_k=max(dcfg.top_k) if dcfg.top_k else None,
                           coverage=None if dcfg.top_k else dcfg.coverage, always=always)
        ids = np.union1d(ids, kept.ids)
    return ids


def _check_same_vocab(drafter, target) -> None:
    a, b = drafter.config.vocab_size, target.config.vocab_size
    if a != b:
        raise TascError(f"the drafter's vocabulary has {a} tokens, the target's {b}: a drafter "
                        "must share the target's tokenizer")
