"""Write a tiny random-weight llama GGUF (SentencePiece-style vocab, chat template) in ~0.1 s.

Real llama.cpp loads and runs it like any model, so exactness tests exercise the real batch
evaluation, KV-cache rollback and tokenizer - only the weights are small and random.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["▁the", "▁a", "▁order", "▁coffee", "▁milk", "▁large", "▁small", "▁json", "▁{", "▁}",
         "▁\"", "\":", "▁,", "▁drink", "▁size", "▁one", "▁two", "▁yes", "▁no", "▁hello"]
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def vocab(extra: list[str] | None = None) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE...
    pieces = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + WORDS + (extra or [])
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def write_tiny_gguf(path: Path, seed: int = 0, n_embd: int = 64, n_layer: int = 2,
                    n_head: int = 2, n_head_kv: int = 1, n_ff: int = 128, n_ctx: int = 512,
                    extra_tokens: list[str] | None = None, scale: float = 1.0,
                    qtype: str = "Q8_0") -> Path:
    """qtype: "Q8_0" (default, like deployed models) or "F32". With quantized weights llama.cpp
    quantizes activations per row, so a k-token forward reproduces k one-token forwards bit for
    bit; F32 weights take a different kernel for batches and do not (see test_decode_llama)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab(extra_tokens)
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    def w(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    qt = gguf.GGMLQuantizationType[qtype]
    writer.add_file_type(0 if qtype == "F32" else 7)  # ALL_F32 / MOSTLY_Q8_0

    def matrix(name: str, arr: np.ndarray) -> None:
        if qtype == "F32":
            writer.add_tensor(name, arr)
        else:
            writer.add_tensor(name, gguf.quants.quantize(arr, qt), raw_dtype=qt)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    matrix("token_embd.weight", w(n_vocab, n_embd, std=1.0))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    matrix("output.weight", w(n_vocab, n_embd, std=scale * 0.5 / np.sqrt(n_embd) * 8))
    for i in range(n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(n_embd, np.float32))
        matrix(p + "attn_q.weight", w(n_embd, n_embd, std=1 / np.sqrt(n_embd)))
        matrix(p + "attn_k.weight", w(n_head_kv * head_dim, n_embd, std=1 / np.sqrt(n_embd)))
        matrix(p + "attn_v.weight", w(n_head_kv * head_dim, n_embd, std=1 / np.sqrt(n_embd)))
        matrix(p + "attn_output.weight", w(n_embd, n_embd, std=1 / np.sqrt(n_embd)))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, np.float32))
        matrix(p + "ffn_gate.weight", w(n_ff, n_embd, std=1 / np.sqrt(n_embd)))
        matrix(p + "ffn_up.weight", w(n_ff, n_embd, std=1 / np.sqrt(n_embd)))
        matrix(p + "ffn_down.weight", w(n_embd, n_ff, std=1 / np.sqrt(n_ff)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
