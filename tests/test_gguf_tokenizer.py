"""The ONNX bundle's tokenizer, converted from a GGUF, splits text exactly as llama.cpp does
with that GGUF: Gemma 3 270M (transformers builds Unigram for its SentencePiece-BPE
vocabulary; export/gguf_tokenizer.py rebuilds it) and SmolLM2 (GPT-2 style BPE, unchanged)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.model
transformers = pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from tasc_edge.errors import TascError  # noqa: E402
from tasc_edge.export.gguf_tokenizer import as_bpe, check_matches_gguf  # noqa: E402
from tasc_edge.runtime.models import PACKAGED_MODELS, default_model, packaged_gguf  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402

# what the tasks hold: plain words, JSON, SQL, runs of spaces, tabs and newlines, non-ASCII
TEXTS = ["Extract the slots from the user utterance", "is  situated near   the river",
         '{"name": "Movies_1_FindMovies", "arguments": {"location": "Newark, NJ"}}',
         "SELECT DISTINCT COUNT( DISTINCT T.ID ) FROM A AS T , B\tWHERE x = 'y'", "a\n\n\nb\n  c",
         "Café déjà vu — 123"]


def texts() -> list[str]:
    demo = load_task("demo")
    return TEXTS + [x for r in demo.train[:40] for x in (r.prompt, r.output)]


def converted(gguf):
    return transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_gemma_tokenizer_rebuilt_as_bpe_matches_llama_cpp():
    gguf = packaged_gguf(PACKAGED_MODELS["gemma3-270m"])  # the gemma extra (in the test command)
    raw = converted(gguf)
    with pytest.raises(TascError, match="splits .* task texts unlike"):  # transformers' Unigram
        check_matches_gguf(lambda t: raw.encode(t, add_special_tokens=False), gguf, texts(), log=lambda *_: None)
    tok = as_bpe(raw, gguf)
    check_matches_gguf(lambda t: tok.encode(t, add_special_tokens=False), gguf, texts(), log=lambda *_: None)
    for t in texts():  # and the text comes back unchanged
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t


def test_smollm2_tokenizer_is_left_alone_and_matches():
    gguf = default_model()
    tok = converted(gguf)
    assert as_bpe(tok, gguf) is tok and tok.backend_tokenizer.model.__class__.__name__ == "BPE"
    check_matches_gguf(lambda t: tok.encode(t, add_special_tokens=False), gguf, texts(), log=lambda *_: None)
    with pytest.raises(TascError, match="please report the model"):
        check_matches_gguf(lambda t: [1], gguf, texts()[:3], log=lambda *_: None)
