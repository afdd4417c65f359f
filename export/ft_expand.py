"""`tasc-edge ft expand`: add the task's most frequent output n-grams to the tokenizer (TASC-ft).

Each round tokenizes the train outputs with the current tokenizer, counts token n-grams
(n = 2..max_n), scores each by count x tokens it would save (n - 1), adds the best batch as
new tokens and retokenizes, until the budget is spent. A new token is the exact text of an
existing token sequence, added with the `tokenizers` API as a literal (non-normalized)
`AddedToken`: the tokenizer matches it in raw text before BPE, and decoding emits its text
verbatim, so decode(encode(x)) == x is unchanged (checked on every train output each round).

Two new tokens that can match overlapping spans of the same text are never both added (see
`overlaps`): llama.cpp and `tokenizers` break such ties differently.

A literal token is matched wherever its text occurs - in prompts too - so a careless one
mangles the words around it (", a" turns ", area[" into ", a" + "rea"). Candidates therefore
respect word boundaries: none ends in whitespace (GPT-2-style BPE gives the space to the next
word), and one that would cut a word in more than `max_split` of its occurrences in the
outputs and prompts (" in the rivers" + "ide") is skipped.

Two details keep decoding exact for byte-level BPE vocabularies (GPT-2 style, SmolLM2):
  * only ASCII candidates: a byte-level decoder maps Latin-1 characters of an added token's
    text to single bytes, which would corrupt "é" in a literal added token;
  * the decoder becomes plain per-token ByteLevel: the GGUF-derived tokenizers fuse all tokens
    into one string before byte decoding, and a literal " is a" (real spaces) then makes the
    whole fused string fall back to raw text, "Ġ" and all.

The model side: new embedding rows (and head rows, if untied) start as the mean of their
parts' rows (`init_new_rows`), then `tasc-edge ft train` teaches the model to use them.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tasc_edge.errors import TascError, require

FORMAT = "tasc-edge.ft-expand/1"


@dataclass
class ExpandConfig:
    task: str  # dataset folder (train.jsonl) or a .jsonl of rows with outputs
    out: str  # an HF checkpoint folder: resized model + expanded tokenizer + expansion.json
    model: str | None = None  # HF folder or .gguf; None = the packaged SmolLM2
    budget: int = 300  # new tokens in total
    per_round: int = 50  # new tokens per round
    max_n: int = 8  # longest token n-gram considered per round (rounds compound: n-grams of new tokens)
    min_count: int = 8  # an n-gram seen fewer times is not worth a vocabulary row
    max_split: float = 0.05  # skip a candidate cutting a word in more than this share of its matches
    train_limit: int | None = None  # first N train rows (None = all)


@dataclass
class Round:
    round: int
    added: int  # new tokens this round
    vocab_added: int  # new tokens so far
    output_tokens: int  # tokens of all train outputs with the tokenizer after this round
    tokens_per_output: float
    compression: float  # base tokens / current tokens


@dataclass
class Expansion:
    base_vocab: int
    tokens: list[str] = field(default_factory=list)  # new token texts, in id order
    rounds: list[Round] = field(default_factory=list)


def expanded_tokenizer(base_json: str, added: Sequence[str]):
    """The base tokenizer (its JSON) plus `added` as literal tokens, ids after the base vocab."""
    tokenizers = require("tokenizers", "export")
    tok = tokenizers.Tokenizer.from_str(base_json)
    if added:
        if _is_byte_level(json.loads(base_json)):
            tok.decoder = tokenizers.decoders.ByteLevel()  # per token: see the module doc
        tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False) for t in added])
    return tok


def expand_vocabulary(base_json: str, outputs: Sequence[str], cfg: ExpandConfig, log=print,
                      prompts: Sequence[str] = ()) -> Expansion:
    """`prompts`: other text the tokenizer will see (the task's prompts), for the word-cut test."""
    if not outputs:
        raise TascError(f"{cfg.task}: no train outputs to expand the vocabulary from")
    if cfg.budget < 1 or cfg.per_round < 1 or cfg.max_n < 2:
        raise TascError("--budget and --per-round must be >= 1 and --max-n >= 2")
    base = expanded_tokenizer(base_json, [])
    base_vocab = base.get_vocab_size(with_added_tokens=True)
    base_total = sum(len(e.ids) for e in base.encode_batch(list(outputs), add_special_tokens=False))
    exp = Expansion(base_vocab)
    tok = base
    corpus = "\n".join([*outputs, *prompts[:2000]])
    log(f"base: {base_total / len(outputs):.2f} tokens per output ({len(outputs)} outputs)")
    while len(exp.tokens) < cfg.budget:
        seqs = [e.ids for e in tok.encode_batch(list(outputs), add_special_tokens=False)]
        want = min(cfg.per_round, cfg.budget - len(exp.tokens))
        chosen = best_ngrams(seqs, tok, set(exp.tokens), want, cfg.max_n, cfg.min_count,
                             lambda t, picks: cuts_words(t, corpus) <= cfg.max_split
                             and not overlaps(t, [*exp.tokens, *picks], corpus))
        if not chosen:
            log("no n-gram left above --min-count: stopping early")
            break
        exp.tokens += chosen
        tok = expanded_tokenizer(base_json, exp.tokens)
        total = check_round_trip(tok, outputs)
        exp.rounds.append(Round(len(exp.rounds) + 1, len(chosen), len(exp.tokens), total,
                                total / len(outputs), base_total / total))
        r = exp.rounds[-1]
        log(f"round {r.round}: +{r.added} tokens ({r.vocab_added} total), "
            f"{r.tokens_per_output:.2f} tokens per output, compression {r.compression:.3f}x")
    return exp


def best_ngrams(seqs: list[list[int]], tok, taken: set[str], want: int, max_n: int,
                min_count: int, keep=lambda text, picks: True) -> list[str]:
    """The `want` best new token texts: count x (n - 1), distinct texts, none containing or
    contained in another pick of the same round (that one is re-scored next round instead)."""
    counts: Counter[tuple[int, ...]] = Counter()
    for s in seqs:
        for n in range(2, max_n + 1):
            for i in range(len(s) - n + 1):
                counts[tuple(s[i:i + n])] += 1
    specials = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    scored: dict[str, int] = {}
    for gram, c in counts.items():
        if c < min_count:
            continue
        text = tok.decode(list(gram), skip_special_tokens=False)
        if not text or not text.isascii() or text in taken or not text.strip() or text[-1].isspace():
            continue
        if specials.intersection(gram):
            continue
        scored[text] = max(scored.get(text, 0), c * (len(gram) - 1))
    picks: list[str] = []
    for text, _ in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0])):
        if any(text in p or p in text for p in picks) or not keep(text, picks):
            continue
        picks.append(text)
        if len(picks) == want:
            break
    return picks


def cuts_words(text: str, corpus: str) -> float:
    """Share of `text`'s matches in `corpus` that start or end inside a word."""
    head = r"(?<=[A-Za-z0-9])" if text[0].isalnum() else r"(?!)"
    tail = r"(?=[A-Za-z0-9])" if text[-1].isalnum() else r"(?!)"
    esc = re.escape(text)
    total = len(re.findall(esc, corpus))
    if not total:
        return 0.0
    cut = len(re.findall(f"{head}{esc}|{esc}{tail}", corpus))
    return cut / total


def overlaps(text: str, others: Sequence[str], corpus: str) -> bool:
    """Could `text` and another new token match overlapping spans of real text? Tokenizers
    resolve that differently - `tokenizers` takes the leftmost match, llama.cpp the longest
    token first - so such a pair would make the GGUF bundle tokenize unlike the training data."""
    for o in others:
        for a, b in ((text, o), (o, text)):
            for k in range(1, min(len(a), len(b))):
                if a.endswith(b[:k]) and a + b[k:] in corpus:
                    return True
    return False


def check_round_trip(tok, outputs: Sequence[str]) -> int:
    """Total tokens of `outputs`; raises if any output does not decode back to itself."""
    total = 0
    for text, enc in zip(outputs, tok.encode_batch(list(outputs), add_special_tokens=False)):
        back = tok.decode(enc.ids, skip_special_tokens=False)
        if back != text:
            raise TascError(f"expanded tokenizer does not round-trip {text[:60]!r} -> {back[:60]!r}")
        total += len(enc.ids)
    return total


def init_new_rows(model, base_tok, new_tokens: Sequence[str], base_vocab: int) -> None:
    """Resize the embeddings (and an untied head) and set each new row to the mean of the rows
    of the base tokens it is made of."""
    torch = require("torch", "export")
    model.resize_token_embeddings(base_vocab + len(new_tokens), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight.data_ptr() != emb.data_ptr()
    with torch.no_grad():
        for j, text in enumerate(new_tokens):
            parts = base_tok.encode(text, add_special_tokens=False).ids
            emb[base_vocab + j] = emb[parts].mean(0)
            if untied:
                head.weight[base_vocab + j] = head.weight[parts].mean(0)


def write_expansion(exp: Expansion, cfg: ExpandConfig, folder: Path) -> None:
    from tasc_edge.files import atomic_write_text

    atomic_write_text(folder / "expansion.json", json.dumps(
        {"format": FORMAT, "config": asdict(cfg), "base_vocab": exp.base_vocab, "tokens": exp.tokens,
         "rounds": [asdict(r) for r in exp.rounds]}, indent=1) + "\n")


def read_expansion(folder: Path) -> dict | None:
    path = folder / "expansion.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise TascError(f"{path}: format {data.get('format')!r}, expected {FORMAT}")
    return data


def run_expand(cfg: ExpandConfig, log=print) -> Path:
    """Expand, then write an HF checkpoint: the model with initialised new rows, the tokenizer
    with the new tokens (transformers' add_tokens), expansion.json with every round. Written
    under a temporary name and renamed: an interrupted run leaves nothing that looks done."""
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    tokenizers = require("tokenizers", "export")
    from tasc_edge.export.ft_data import hf_source, train_rows

    out = Path(cfg.out)
    source = Path(hf_source(cfg.model, out.parent / f".{out.name}.work", log))
    rows = train_rows(cfg.task, cfg.train_limit)
    hf_tok = transformers.AutoTokenizer.from_pretrained(source)
    base_json = hf_tok.backend_tokenizer.to_str()
    exp = expand_vocabulary(base_json, [r.output for r in rows], cfg, log, [r.prompt for r in rows])
    if len(hf_tok) != exp.base_vocab:
        raise TascError(f"{source}: tokenizer has {len(hf_tok)} tokens but its vocabulary {exp.base_vocab}")
    if _is_byte_level(json.loads(base_json)):
        hf_tok.backend_tokenizer.decoder = tokenizers.decoders.ByteLevel()  # see the module doc
    hf_tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False) for t in exp.tokens])
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    init_new_rows(model, expanded_tokenizer(base_json, []), exp.tokens, exp.base_vocab)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    hf_tok.save_pretrained(tmp)
    if (source / "base.json").is_file():  # the GGUF it came from: the GGUF writer's metadata
        shutil.copy(source / "base.json", tmp / "base.json")
    saved = tokenizers.Tokenizer.from_file(str(tmp / "tokenizer.json"))  # what the runtime loads
    check_round_trip(saved, [r.output for r in rows])
    write_expansion(exp, cfg, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"expanded checkpoint written to {out}: +{len(exp.tokens)} tokens, "
        f"compression {exp.rounds[-1].compression if exp.rounds else 1.0:.2f}x on the train outputs")
    return out


def _is_byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))
