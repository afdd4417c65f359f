"""The tokenizer an ONNX bundle gets from a GGUF, made right and checked against llama.cpp's.

transformers converts a GGUF's vocabulary into a `tokenizers` model when it loads the GGUF
(`AutoTokenizer.from_pretrained(..., gguf_file=)`). For Gemma it builds a *Unigram* model
from the pieces and their scores (transformers 4.57; upstream issue #41494, the fix PR was
closed), but Gemma's SentencePiece model is BPE: llama.cpp merges adjacent pieces in score
order. A Viterbi search over those scores prefers short pieces, so the Gemma 3 270M bundle
cut "Extract the slots from the user utterance" into 19 tokens ("Ex", "tr", "act", "▁t",
"he", ...) where llama.cpp gives 7, and the model, seeing garbled prompts, echoed them back
with typos. `as_bpe` rebuilds such a tokenizer as BPE with merges ordered by score
(transformers' own `generate_merges`, as its SentencePiece converters do) and the GGUF's
USER_DEFINED pieces as added tokens, and
`check_matches_gguf` refuses an export whose tokenizer disagrees with the GGUF's own
(llama.cpp, vocabulary only) on the task's texts.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasc_edge.errors import TascError, require


USER_DEFINED = 4  # tokenizer.ggml.token_type: llama.cpp matches these in raw text before merging


def as_bpe(tok, gguf: Path):
    """A transformers fast tokenizer that transformers built as Unigram from `gguf`'s
    SentencePiece-BPE vocabulary, rebuilt as that BPE from the GGUF's own pieces and scores:
    merges in score order, and USER_DEFINED pieces (Gemma: runs of spaces, tabs, newlines) as
    added tokens, matched in the raw text first as llama.cpp does. Normalizer, decoder and the
    control tokens are kept; a tokenizer that is not Unigram is returned unchanged."""
    tokenizers = require("tokenizers", "export")
    gguf_py = require("gguf", "export")
    from transformers.convert_slow_tokenizer import generate_merges

    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "Unigram":
        return tok
    reader = gguf_py.GGUFReader(str(gguf))

    def array(key: str) -> list:
        f = reader.get_field(key)
        return [f.contents(i) for i in range(len(f.data))]

    pieces, scores, types = array("tokenizer.ggml.tokens"), array("tokenizer.ggml.scores"), array("tokenizer.ggml.token_type")
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        vocab.setdefault(piece, i)  # a repeated piece keeps its first id, as llama.cpp's lookup does
    merges = generate_merges(vocab, list(zip(pieces, scores)))
    spec["model"] = {"type": "BPE", "dropout": None, "unk_token": pieces[model["unk_id"]],
                     "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                     "byte_fallback": bool(model.get("byte_fallback")), "ignore_merges": False,
                     "vocab": vocab, "merges": [list(m) for m in merges]}
    added = {t["id"] for t in spec["added_tokens"]}
    spec["added_tokens"] += [
        {"id": i, "content": pieces[i], "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False}
        for i, kind in enumerate(types) if kind == USER_DEFINED and i not in added]
    tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec))
    return tok


def check_matches_gguf(tokenize, gguf: Path, texts: list[str], log=print) -> None:
    """Raise unless `tokenize(text)` equals llama.cpp's tokenization of `text` with the GGUF's
    own vocabulary (no BOS, no special-token parsing) for every text."""
    llama_cpp = require("llama_cpp", "runtime")
    from tasc_edge.runtime.llama_backend import open_llama

    llm = open_llama(llama_cpp, model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        bad = [t for t in texts if tokenize(t) != llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)]
    finally:
        llm.close()
    if bad:
        raise TascError(f"the exported tokenizer splits {len(bad)} of {len(texts)} task texts unlike "
                        f"{gguf.name}'s own (llama.cpp), e.g. {bad[0][:60]!r}: the bundle would not "
                        "run the model it was made from; please report the model")
    log(f"tokenizer checked against {gguf.name} (llama.cpp) on {len(texts)} task texts: identical")
