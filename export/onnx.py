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

import numpy as np

from tasc_edge.errors import TascError, require
from tasc_edge.files import atomic_write_npy
from tasc_edge.runtime.onnx_backend import HIDDEN_OUTPUT  # numpy only at import

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


def export_onnx(hf_dir: Path, work: Path, out: Path, quant: str = "int4", log=print,
                keep_rows=None, embed_out: Path | None = None, embed_shared: Path | None = None,
                hidden_out: bool = False) -> ModelFile:
    """`keep_rows`: target ids the LM head keeps (a VocabTrim drafter); None keeps them all.
    `embed_out`: move the input embedding table out of the graph into this .npy (the model
    then takes `inputs_embeds`), or reference `embed_shared` if that file holds the same table
    (a self-drafter reads the target's): see place_table."""
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
    if bits is not None or keep_rows is not None or embed_out is not None:
        untie_lm_head(model)  # fp32 keeps a tied head, unless rows or the embedding leave it
    if keep_rows is not None:
        trim_lm_head(model, keep_rows)
    if hidden_out:
        add_hidden_output(model)
    embed = None
    if embed_out is not None:
        embed = place_table(move_embedding_out(model), embed_out, embed_shared)
    if bits is not None:
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
    trimmed = "" if keep_rows is None else f" + head trimmed to {len(keep_rows)} rows"
    trimmed += "" if embed is None else f" + input embeddings in {embed.name}"
    return ModelFile(out / "model.onnx", f"optimum-onnx main_export(text-generation-with-past) + "
                     f"untied head{trimmed} + {quant} weight-only quantization", quant,
                     time.perf_counter() - start)


def untie_lm_head(model) -> bool:
    """Replace MatMul(x, Transpose(embedding)) by MatMul(x, W) with W = embedding^T stored."""
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


def move_embedding_out(model) -> np.ndarray:
    """Take the input embedding Gather out of the graph: its table is returned, and a new graph
    input `inputs_embeds` [batch, sequence, hidden] feeds what the Gather fed (Gemma's scale
    and everything else stay in the graph). Why: a drafter reads one embedding row per token
    but onnxruntime holds the whole table in its arena; a 262k-token Gemma table is 671 MB in
    fp32, per drafter. Memory-mapped by the runtime instead, only the rows in use are paged in,
    and every drafter of a bundle maps the same file. `input_ids` stays an input only if the
    graph still reads it (for shapes). Call after untie_lm_head (the head must not share it)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                   and n.input[1] == "input_ids"), None)
    if gather is None:
        raise TascError("no embedding Gather on input_ids in the exported graph")
    init = inits[gather.input[0]]
    if any(init.name in n.input for n in graph.node if n is not gather):
        raise TascError(f"the embedding {init.name} is read by more than its Gather (a tied head?)")
    table = numpy_helper.to_array(init)
    at = list(graph.node).index(gather)  # the Identity takes its place: nodes stay sorted
    graph.node.remove(gather)
    graph.initializer.remove(init)
    graph.node.insert(at, helper.make_node("Identity", ["inputs_embeds"], [gather.output[0]],
                                           name="inputs_embeds_identity"))
    dtype = helper.np_dtype_to_tensor_dtype(table.dtype)
    graph.input.append(helper.make_tensor_value_info(
        "inputs_embeds", dtype, ["batch_size", "sequence_length", int(table.shape[1])]))
    if not any("input_ids" in n.input for n in graph.node):
        ids = next(i for i in graph.input if i.name == "input_ids")
        graph.input.remove(ids)
    return table


def place_table(table: np.ndarray, path: Path, shared: Path | None = None) -> Path:
    """Where an embedding table is kept: `shared` if that file already holds it (then a stale
    `path` from another drafter goes), else `path`, rewritten only when it differs."""
    if shared is not None and shared.is_file() and np.array_equal(np.load(shared, mmap_mode="r"), table):
        path.unlink(missing_ok=True)
        return shared
    if not path.is_file() or not np.array_equal(np.load(path, mmap_mode="r"), table):
        atomic_write_npy(path, table)
    return path


def _lm_head_matmul(graph):
    """The MatMul that makes 'logits' (walking back over e.g. a soft-cap after it)."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get("logits")
    while node is not None and node.op_type != "MatMul":
        node = producer.get(node.input[0])
    if node is None:
        raise TascError("could not find the LM head MatMul feeding 'logits'")
    return node


def add_hidden_output(model) -> None:
    """A second output, HIDDEN_OUTPUT: the final hidden state the LM head reads (after the
    final norm), for a hidden-state head drafter (tasc_edge/hidden_head.py). The graph computes
    it anyway; asking for it costs a copy of one row per token."""
    from onnx import TensorProto, helper

    graph = model.graph
    if any(o.name == HIDDEN_OUTPUT for o in graph.output):
        return
    head = _lm_head_matmul(graph)
    graph.node.append(helper.make_node("Identity", [head.input[0]], [HIDDEN_OUTPUT], name="tasc_hidden"))
    graph.output.append(helper.make_tensor_value_info(HIDDEN_OUTPUT, TensorProto.FLOAT,
                                                      ["batch_size", "sequence_length", "hidden_size"]))


def trim_lm_head(model, keep_rows) -> None:
    """Keep only the head columns `keep_rows` (VocabTrim): logits shrink to [.., K], and the
    graph output says so. Needs an untied head (a plain MatMul weight [hidden, vocab])."""
    from onnx import numpy_helper

    graph = model.graph
    logits = next((o for o in graph.output if o.name == "logits"), None)
    if logits is None:
        raise TascError("no 'logits' output in the exported graph")
    inits = {i.name: i for i in graph.initializer}
    node = _lm_head_matmul(graph)
    if node.input[1] not in inits:
        raise TascError("could not find the LM head MatMul feeding 'logits' (untie it first)")
    init = inits[node.input[1]]
    w = numpy_helper.to_array(init)
    keep = np.asarray(keep_rows, dtype=np.int64)
    if keep.max() >= w.shape[1]:
        raise TascError(f"kept id {int(keep.max())} outside the head's {w.shape[1]} rows")
    graph.initializer.remove(init)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, keep]), init.name))
    logits.type.tensor_type.shape.dim[-1].dim_value = len(keep)


def step_bytes(path: Path) -> int:
    """Weight bytes one decode step reads: every initializer except tables read by Gather
    (the embedding: one row per token). The `c` of MBSU is a drafter's step_bytes over the
    target's."""
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    used_elsewhere = {i for n in model.graph.node if n.op_type != "Gather" for i in n.input}
    total = 0
    for init in model.graph.initializer:
        if init.name in gathered and init.name not in used_elsewhere:
            continue
        total += _init_bytes(init)
    return total


def _init_bytes(init) -> int:
    from onnx import helper

    if init.raw_data:
        return len(init.raw_data)
    for ext in init.external_data:
        if ext.key == "length":
            return int(ext.value)
    n = int(np.prod(init.dims)) if init.dims else 1
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def quantize_weights(model, bits: int):
    require("onnx_ir", "export")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    return q.model.model
