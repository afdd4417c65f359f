"""Artifact bundles: what `tasc-edge export` writes and the device runs, with no torch.

    bundle/
      manifest.json       written last: a bundle without it is incomplete
      model.onnx | model.gguf
      embed.npy           ONNX: the input embedding table, outside the graph (memory-mapped)
      tokenizer.json, tokenizer_config.json, chat_template.jinja, config.json  (ONNX only;
                          a GGUF carries its tokenizer and template inside)
      tables/<task>.npz   task n-gram tables, made with this bundle's tokenizer
      drafter/<variant>/  VocabTrim drafters (export/vocabtrim.py)

manifest.json: format version, bundle format, every file with sha256, size and how it was
made, the tokenizer hash, model architecture and bytes, package versions. Loading checks all
of it and refuses a mismatch in one line; nothing is unpickled (tables are plain .npz arrays).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_text, sha256_file
from tasc_edge.ngram import NgramTable

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MODEL_FILES = {"onnx": "model.onnx", "gguf": "model.gguf"}


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILES[self.format]

    @property
    def tasks(self) -> list[str]:
        return sorted(self.manifest.get("tables", {}))

    def table_path(self, task: str) -> Path | None:
        rel = self.manifest.get("tables", {}).get(task)
        return self.path / rel if rel else None


def file_entry(root: Path, path: Path, made_by: str) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "made_by": made_by,
            "path": path.relative_to(root).as_posix()}


def write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle: every listed file present with its size and sha256."""
    root = Path(path)
    mf = root / MANIFEST
    if not root.is_dir():
        raise TascError(f"bundle {root} not found")
    if not mf.is_file():
        raise TascError(f"{root} is not a complete bundle (no {MANIFEST}): the export did not "
                        "finish; re-run the same `tasc-edge export` command to resume")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TascError(f"{mf}: not valid JSON ({e.msg}); re-run the export") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise TascError(f"{mf}: bundle format version {version}, this tasc-edge reads "
                        f"{FORMAT_VERSION}; re-export with this version")
    if manifest.get("format") not in MODEL_FILES:
        raise TascError(f"{mf}: unknown bundle format {manifest.get('format')!r}")
    if verify:
        for entry in manifest.get("files", []):
            f = root / entry["path"]
            if not f.is_file():
                raise TascError(f"{root}: {entry['path']} is missing (truncated bundle); re-export")
            if f.stat().st_size != entry["bytes"]:
                raise TascError(f"{root}: {entry['path']} is {f.stat().st_size} bytes, manifest "
                                f"says {entry['bytes']} (truncated or replaced); re-export")
            if sha256_file(f) != entry["sha256"]:
                raise TascError(f"{root}: {entry['path']} fails its sha256 check (corrupted or "
                                "modified); re-export")
    return Bundle(root, manifest)


def open_model(fmt: str, model_path: Path, n_ctx: int | None = None, n_threads: int | None = None,
               spin: bool = False):
    """The backend that runs a bundle format's model file (no manifest checks: export uses it
    on a bundle still being written). `spin`: onnxruntime's workers busy-wait between ops
    (faster on a quiet device, slower when the cores are shared; llama.cpp ignores it)."""
    if fmt == "onnx":
        from tasc_edge.runtime.onnx_backend import OnnxBackend

        return OnnxBackend(model_path, n_ctx=n_ctx, n_threads=n_threads, spinning=spin)
    from tasc_edge.runtime.llama_backend import LlamaCppBackend

    return LlamaCppBackend(model_path, n_ctx=n_ctx or 4096, n_threads=n_threads)


def open_backend(bundle: Bundle, n_ctx: int | None = None, n_threads: int | None = None,
                 spin: bool = False):
    """The bundle's model on its backend; refuses a tokenizer that is not the exported one."""
    backend = open_model(bundle.format, bundle.model_path, n_ctx, n_threads, spin)
    want = bundle.manifest["tokenizer_hash"]
    if backend.tokenizer_hash != want:
        backend.close()
        raise TascError(f"{bundle.path}: the model's tokenizer hash {backend.tokenizer_hash[:12]} "
                        f"is not the manifest's {want[:12]}; the bundle mixes files from two exports")
    return backend


def load_table(bundle: Bundle, task: str, tokenizer_hash: str) -> NgramTable | None:
    path = bundle.table_path(task)
    return None if path is None else NgramTable.load(path, tokenizer_hash)


def open_target(model: str | None, quant: str, n_ctx: int, threads: int | None,
                bundle: str | None = None, spin: bool = False):
    """(backend, model path, bundle or None): a bundle's model, or a GGUF (default: packaged)."""
    if bundle:
        b = load_bundle(bundle)
        return open_backend(b, n_ctx, threads, spin), b.model_path, b
    from tasc_edge.runtime.llama_backend import LlamaCppBackend
    from tasc_edge.runtime.models import resolve_model

    path = resolve_model(model, quant)
    return LlamaCppBackend(path, n_ctx=n_ctx, n_threads=threads), path, None


def drafter_variants(bundle: Bundle) -> list[str]:
    return sorted(bundle.manifest.get("drafters", {}))


def open_drafter(bundle: Bundle, variant: str, target, sampling=None, seed: int = 0,
                 n_threads: int | None = None, config=None):
    """A bundle's VocabTrim drafter (drafter/<variant>) as a ModelDrafter for `target`.
    Refuses a drafter whose tokenizer or kept-id list was made for another tokenizer."""
    from tasc_edge.model_drafter import ModelDrafter
    from tasc_edge.runtime.onnx_backend import OnnxBackend
    from tasc_edge.vocab_trim import KeptVocab

    entry = bundle.manifest.get("drafters", {}).get(variant)
    if entry is None:
        raise TascError(f"bundle {bundle.path} has no drafter {variant!r} (it has "
                        f"{', '.join(drafter_variants(bundle)) or 'none'}; export with --drafter-layers)")
    folder = bundle.path / entry["dir"]
    kept = KeptVocab.load(folder / "kept.npz", target.tokenizer_hash) if entry.get("k") else None
    if entry.get("kind") == "hidden-head":  # no model of its own: it reads the target's states
        from tasc_edge.hidden_head import HiddenHead, HiddenHeadDrafter

        if not getattr(target, "has_hidden", False):
            raise TascError(f"drafter {variant!r} reads the target's hidden states and this target "
                            "outputs none (an ONNX bundle exported before hidden outputs: re-export it)")
        return HiddenHeadDrafter(target, HiddenHead.load(folder / "head.npz", kept), target.n_vocab,
                                 sampling, seed)
    placeholder_vocab = bundle.format == "gguf" and kept is not None
    if bundle.format == "gguf":
        from tasc_edge.runtime.llama_backend import LlamaCppBackend

        # a trimmed GGUF drafter's own vocabulary is the K kept ids (placeholders): inputs arrive
        # as rows of the target-vocabulary table; the kept list above carries the tokenizer check
        # (bundles before the shared table kept one per variant folder)
        table = bundle.path / entry["embed"] if entry.get("embed") else folder / "embed.npy"
        embed = _embedding_table(table, target.n_vocab) if placeholder_vocab else None
        backend = LlamaCppBackend(folder / "model.gguf", n_ctx=target.n_ctx, n_threads=n_threads,
                                  input_embeddings=embed)
    else:  # drafts need not be bit-exact, so the drafter skips the pad row the target needs
        # newer exports move the table out of the graph: one file, mapped, shared by the variants
        embed = _embedding_table(bundle.path / entry["embed"], target.n_vocab) if entry.get("embed") else None
        backend = OnnxBackend(folder / "model.onnx", n_ctx=target.n_ctx, n_threads=n_threads, min_rows=1,
                              input_embeddings=embed)
    if not placeholder_vocab and backend.tokenizer_hash != target.tokenizer_hash:
        backend.close()
        raise TascError(f"{folder}: the drafter's tokenizer {backend.tokenizer_hash[:12]} is not the "
                        f"target's {target.tokenizer_hash[:12]}; a drafter must share the target's tokenizer")
    return ModelDrafter(backend, target.n_vocab, kept, sampling, seed, config)


def _embedding_table(path: Path, n_vocab: int) -> np.ndarray:
    """A drafter's input embedding table [n_vocab, hidden], memory-mapped (rows page in as used)."""
    table = np.load(path, mmap_mode="r", allow_pickle=False)
    if table.ndim != 2 or table.shape[0] != n_vocab:
        raise TascError(f"{path} has shape {table.shape}, not the target's vocabulary of {n_vocab} "
                        "rows; a drafter must share the target's tokenizer")
    return table
