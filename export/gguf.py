"""GGUF export: the given GGUF, requantized by llama.cpp (same contract as export/onnx.py).

An HF checkpoint is written to an F16 GGUF first by export/gguf_write.py, which covers the
Llama-family checkpoints TASC-ft produces (the base GGUF's metadata plus the new tokens);
other architectures need llama.cpp's `convert_hf_to_gguf.py` (in no wheel we depend on).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tasc_edge.errors import TascError
from tasc_edge.export.onnx import ModelFile
from tasc_edge.runtime.models import resolve_model


def export_gguf(source: Path, work: Path, out: Path, quant: str = "q4_0", log=print) -> ModelFile:
    start = time.perf_counter()
    if source.is_dir():
        from tasc_edge.export.gguf_write import write_gguf

        if not (source / "config.json").is_file():
            raise TascError(f"{source}: no config.json; pass an HF checkpoint folder or a .gguf")
        log(f"writing {source.name} as an F16 GGUF")
        source = write_gguf(source, work / "model-f16.gguf", log)
        if quant == "as-is":
            quant = "f16"
    log(f"writing model.gguf ({quant}) from {source.name}")
    src = resolve_model(str(source), quant)  # requantized once, cached, written atomically
    tmp = work / "model.gguf.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, out / "model.gguf")
    made_by = f"llama.cpp llama_model_quantize to {quant}" if quant != "as-is" else "copied as given"
    return ModelFile(out / "model.gguf", made_by, quant, time.perf_counter() - start)
