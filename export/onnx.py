"""ONNX export: optimum's `text-generation-with-past` exporter, head untied, weight-only quantized.

Contract shared with export/gguf.py: `export_<format>(source, work, out, quant, log) -> ModelFile`
writes the model (and, for ONNX, its tokenizer files) into `out` (atomically: built under
`work`, renamed into place) and says how it was made.

Quantization is weight-only MatMulNBits (onnxruntime.quantization), not `quantize_dynamic`:
dynamic quantization scales activations per *tensor*, so a k-token verify forward quantizes
each row with a scale that depends on the other rows, and speculative output drifts from plain
decoding. MatMulNBits with accuracy_level 4 quantizes activations per row and block, and its
multi-row results are bit-identical however a sequence is split (measured; see
runtime/onnx_backend.py for the one-row exception). The tied LM head exports as
MatMul(Transpose(embedding)); untying it first lets the quantizer see a plain weight, so the
head is quantized too (the embedding Gather stays fp32: it reads one row per token).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tasc_edge.errors import TascError, require

ONNX_QUANTS = {"fp32": None, "int8": 8, "int4": 4}
# what the device needs next to model.onnx (a GGUF carries its tokenizer and template inside)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
                   "generation_config.json", "special_tokens_map.json")


@dataclass
class ModelFile:
    path: Path
    made_by: str
    quant: str
    seconds: float


def export_onnx(hf_dir: Path, work: Path, out: Path, quant: str = "int4", log=print) -> ModelFile:
    if quant not in ONNX_QUANTS:
        raise TascError(f"unknown ONNX quantization {quant!r}; choose {', '.join(ONNX_QUANTS)}")
    onnx = require("onnx", "export")
    require("optimum.exporters.onnx", "export")
    from optimum.exporters.onnx import main_export

    start = time.perf_counter()
    raw = work / "onnx-fp32"
    if not (raw / "model.onnx").is_file() or not (raw / ".complete").is_file():
        shutil.rmtree(raw, ignore_errors=True)
        log(f"exporting {hf_dir} to ONNX (optimum, text-generation-with-past)")
        main_export(str(hf_dir), str(raw), task="text-generation-with-past", do_validation=False,
                    device="cpu")
        (raw / ".complete").write_text("ok\n")
    model = onnx.load(str(raw / "model.onnx"))
    bits = ONNX_QUANTS[quant]
    if bits is not None:  # fp32 keeps the tied head: untying would only add a 2nd copy
        untie_lm_head(model)
        log(f"quantizing weights to {quant} (MatMulNBits, block 32, accuracy level 4)")
        model = quantize_weights(model, bits)
    onnx.checker.check_model(model)
    tmp = work / "model.onnx.tmp"
    big = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights go to a side file
    onnx.save_model(model, str(tmp), save_as_external_data=big, location="model.onnx.data")
    if big:
        (work / "model.onnx.data").replace(out / "model.onnx.data")
    tmp.replace(out / "model.onnx")
    for name in TOKENIZER_FILES:  # copied next to the model, each renamed into place
        if (raw / name).is_file():
            shutil.copyfile(raw / name, work / name)
            (work / name).replace(out / name)
    return ModelFile(out / "model.onnx", f"optimum-onnx main_export(text-generation-with-past) + "
                     f"untied head + {quant} weight-only quantization", quant,
                     time.perf_counter() - start)


def untie_lm_head(model) -> bool:
    """Replace MatMul(x, Transpose(embedding)) by MatMul(x, W) with W = embedding^T stored."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        if node.op_type == "Transpose" and node.input[0] in inits:
            users = [n for n in graph.node if node.output[0] in n.input]
            if users and all(n.op_type == "MatMul" for n in users):
                w = numpy_helper.to_array(inits[node.input[0]])
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), node.output[0]))
                graph.node.remove(node)
                return True
    return False


def quantize_weights(model, bits: int):
    require("onnx_ir", "export")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    return q.model.model
