"""GGUF export: the given GGUF, requantized by llama.cpp (same contract as export/onnx.py).

An HF checkpoint is not converted here: llama.cpp's `convert_hf_to_gguf.py` is the maintained
converter and is not shipped in any wheel we depend on; run it, then pass the .gguf.
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
    if source.is_dir():
        raise TascError(f"{source}: converting an HF checkpoint to GGUF needs llama.cpp's "
                        "convert_hf_to_gguf.py; convert it there and pass the .gguf, or use "
                        "--format onnx")
    start = time.perf_counter()
    log(f"writing model.gguf ({quant}) from {source.name}")
    src = resolve_model(str(source), quant)  # requantized once, cached, written atomically
    tmp = work / "model.gguf.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, out / "model.gguf")
    made_by = f"llama.cpp llama_model_quantize to {quant}" if quant != "as-is" else "copied as given"
    return ModelFile(out / "model.gguf", made_by, quant, time.perf_counter() - start)
