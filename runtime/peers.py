"""Peer implementations, run the way their users run them, each with its own plain baseline.

* llama-cpp-python: `Llama.generate` greedy, without and with `LlamaPromptLookupDecoding`,
  with llama.cpp configured as our backend is (flash attention, K cache Q8_0 / V cache F16).
  With llama.cpp's default F16 cache a row's logits depend on how the sequence was batched,
  and `Llama.generate` reuses the KV of the previous prompt's common prefix: measured on
  snips, one prompt's greedy output was 128 tokens cold and 5 different tokens after another
  prompt. A baseline that changes its answer with history is no baseline, so both peers
  get the cache settings that make them deterministic (and equal to our plain output).
* Hugging Face transformers: the same GGUF loaded into torch (`gguf_file=`, dequantized to
  fp32), `generate()` greedy without and with `prompt_lookup_num_tokens`.

A bench with a prompt-prefix cache gives the llama.cpp peers the same cache ours has (the
state of earlier prompts, restored inside the timed call, as llama-cpp-python's own
`LlamaRAMCache` does in `create_completion`); the transformers peers have none here and are
refused in such a bench rather than compared cold against a warm cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

from tasc_edge.errors import TascError, require
from tasc_edge.prefix_cache import PrefixCache
from tasc_edge.runtime.llama_backend import load_seq_state, open_llama, save_seq_state

PEER_BASELINE = {"llama-plain": "llama-plain", "llama-pld": "llama-plain",
                 "hf-plain": "hf-plain", "hf-pld": "hf-plain"}
QUANT_PEER = "llama-plain:"  # `llama-plain:<quant>`: plain llama.cpp on another quantization


def peer_quant(method: str) -> str | None:
    """QUANT for `llama-plain:QUANT` (the same model requantized, a fastest-plain candidate
    measured in the same run), None for every other method."""
    quant = method.removeprefix(QUANT_PEER) if method.startswith(QUANT_PEER) else ""
    return quant or None


def is_peer(method: str) -> bool:
    return method in PEER_BASELINE or peer_quant(method) is not None


class Peer(Protocol):
    def generate(self, prompt: Sequence[int], max_new_tokens: int, stops: frozenset[int],
                 on_first: Callable[[int], None]) -> list[int]:
        """Greedy tokens; `on_first(n)` runs once, when the first forward's n tokens land."""
        ...

    def cold(self) -> None: ...  # forget cached prompt tokens: the next call evaluates its prompt in full
    def close(self) -> None: ...


class LlamaPeer:
    def __init__(self, model_path: Path, n_ctx: int, threads: int, pld_tokens: int | None,
                 type_k: int = 8, type_v: int = 1) -> None:
        llama_cpp = require("llama_cpp", "runtime")
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=pld_tokens) if pld_tokens else None
        # With a draft model llama-cpp-python keeps logits for every position, but sizes that
        # buffer from the *argument* logits_all (n_batch rows when False): any prompt past 512
        # tokens then fails with "could not broadcast ... into shape (0,)" (text2sql, bfcl).
        # Passing logits_all=True, the known workaround, is what a user of the peer must do.
        self.llm = open_llama(llama_cpp, model_path=str(model_path), n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, flash_attn=True, verbose=False,
                              type_k=type_k, type_v=type_v, draft_model=draft,
                              logits_all=draft is not None)
        self.lib = llama_cpp
        self.model_path = model_path
        self.prefix_cache: PrefixCache | None = None
        self.reused_tokens = 0  # prompt tokens the last generate took from the prefix cache

    def cold(self) -> None:
        self.llm.reset()  # n_tokens = 0: llama-cpp-python's prefix matching finds nothing

    def remember(self, prompt: Sequence[int]) -> None:
        """Evaluate the prompt (all but its last token, as generate leaves it) and keep the
        sequence state in the prefix cache."""
        self.llm.reset()
        self.llm.eval(list(prompt[:-1]))
        blob = save_seq_state(self.lib, self.llm.ctx)
        self.prefix_cache.store(prompt[:-1], blob, len(blob))

    def _restore(self, prompt: Sequence[int]) -> None:
        hit = self.prefix_cache.lookup(prompt[:-1])
        self.reused_tokens = 0 if hit is None else hit.tokens
        if hit is None:
            return
        load_seq_state(self.lib, self.llm.ctx, hit.snapshot)
        # generate(reset=True) keeps the longest prefix of input_ids[:n_tokens] it shares
        # with the new prompt and trims the KV cache past it
        self.llm.input_ids[: hit.tokens] = list(prompt[: hit.tokens])
        self.llm.n_tokens = hit.tokens

    def generate(self, prompt: Sequence[int], max_new_tokens: int, stops: frozenset[int],
                 on_first: Callable[[int], None]) -> list[int]:
        if self.prefix_cache is not None:
            self._restore(prompt)
        out: list[int] = []
        for tok in self.llm.generate(list(prompt), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True):
            if not out:  # the generator yields one token per step, drafts or not
                on_first(1)
            if tok in stops:
                break
            out.append(int(tok))
            if len(out) >= max_new_tokens:
                break
        return out

    def close(self) -> None:
        self.llm.close()


class HFPeer:
    def __init__(self, model: object, pld_tokens: int | None) -> None:
        self.torch = require("torch", "export")
        self.model = model
        self.pld_tokens = pld_tokens

    def cold(self) -> None:
        pass  # transformers' generate() keeps no cache between calls

    def generate(self, prompt: Sequence[int], max_new_tokens: int, stops: frozenset[int],
                 on_first: Callable[[int], None]) -> list[int]:
        ids = self.torch.tensor([list(prompt)])
        kwargs = {"prompt_lookup_num_tokens": self.pld_tokens} if self.pld_tokens else {}
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=sorted(stops), pad_token_id=sorted(stops)[0],
                                      streamer=FirstTokens(on_first), **kwargs)
        # prompt lookup can overshoot max_new_tokens by part of its last accepted draft
        new = out[0, len(prompt):].tolist()[:max_new_tokens]
        for i, t in enumerate(new):
            if t in stops:
                return new[:i]
        return new

    def close(self) -> None:
        self.model = None


class FirstTokens:
    """A transformers streamer that only notes when the first generated tokens arrive:
    generate() puts the prompt first, then each step's committed tokens (several when
    prompt lookup drafts were accepted)."""

    def __init__(self, on_first: Callable[[int], None]) -> None:
        self.on_first, self.puts = on_first, 0

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.on_first(int(value.numel()))

    def end(self) -> None:
        pass


def load_hf_model(model_path: Path, threads: int) -> object:
    """The GGUF dequantized into a torch fp32 model (one copy serves hf-plain and hf-pld)."""
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    torch.set_num_threads(threads)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32).eval()


def load_peers(methods: list[str], model_path: Path, n_ctx: int, threads: int,
               pld_tokens: int, kv_types: tuple[int, int] = (8, 1),
               requantized: Callable[[str], Path] | None = None) -> dict[str, Peer]:
    """One peer per peer method; `requantized(quant)` gives the GGUF for `llama-plain:<quant>`."""
    peers: dict[str, Peer] = {}
    hf_model = None
    for m in methods:
        if (quant := peer_quant(m)) is not None:
            if requantized is None:
                raise TascError(f"{m} needs the source model to requantize")
            peers[m] = LlamaPeer(requantized(quant), n_ctx, threads, None, *kv_types)
        elif m in ("llama-plain", "llama-pld"):
            peers[m] = LlamaPeer(model_path, n_ctx, threads, pld_tokens if m == "llama-pld" else None,
                                 *kv_types)
        elif m in ("hf-plain", "hf-pld"):
            hf_model = hf_model or load_hf_model(model_path, threads)
            peers[m] = HFPeer(hf_model, pld_tokens if m == "hf-pld" else None)
    return peers


def check_same_tokenizer(peers: dict[str, Peer], backend) -> None:
    """Peers are fed our token ids: refuse a peer model whose vocabulary is not the target's
    (an ONNX bundle's peers load a GGUF; it must be the model the bundle was exported from)."""
    probe = "Hello, world! SELECT name FROM t WHERE id = 3; {\"x\": [1, 2]}"
    want = backend.tokenize(probe)
    for name, peer in peers.items():
        if isinstance(peer, LlamaPeer):
            got = peer.llm.tokenize(probe.encode(), add_bos=False, special=False)
            n_vocab = peer.llm.n_vocab()
        else:
            got, n_vocab = want, peer.model.config.vocab_size
        if list(got) != list(want) or n_vocab != backend.n_vocab:
            raise TascError(f"peer {name}'s model tokenizes unlike the target ({n_vocab} vs "
                            f"{backend.n_vocab} tokens); pass the GGUF the bundle was made from with --model")


class FirstForwardClock:
    """Seconds from its creation until the first forward's tokens landed, and how many there
    were; later calls are ignored. One clock for our loop (`on_tokens`) and for the peers."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: float | None = None
        self.tokens: int | None = None

    def __call__(self, n: int) -> None:
        if self.seconds is None:
            self.seconds, self.tokens = time.perf_counter() - self.start, n


def timed(peer: Peer, prompt: Sequence[int], max_new_tokens: int,
          stops: frozenset[int]) -> tuple[list[int], float, FirstForwardClock]:
    """Tokens, wall seconds, and when the first forward's output arrived."""
    clock = FirstForwardClock()
    out = peer.generate(prompt, max_new_tokens, stops, clock)
    return out, time.perf_counter() - clock.start, clock
