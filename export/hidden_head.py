"""Train a hidden-state head (tasc_edge/hidden_head.py) for a bundle target, from its own outputs.

Data: the target's greedy generations on train prompts (the ones the n-gram tables were built
from, `<table>.generated.jsonl`) and, with `refs`, the dataset outputs of further train rows;
every sequence is teacher-forced through the bundle's own target (llama.cpp, or onnxruntime
with the graph's extra `hidden` output) with hidden states on, so the head learns on exactly
the states it will see on the device (same quantization, same kernels). Labels are always the
target's own argmax: a row whose input token x is what the target would have chosen there
gives one example (hidden state of the row that produced x, x) -> the target's next argmax.
Along a greedy generation that is every row; along a reference output it is the rows where
the reference agrees with the target, which multiplies the data at one batched forward per
sequence (session 14's head, trained on 100 generations per task, was 99% right on its
training rows and 70-78% on held-out ones). Labels outside the kept ids are dropped.

With `depth` D > 1 the head is trained to chain D steps (EAGLE's feature regression with
its own prediction fed back, as in HASS): its u must also match the next row's normalised
hidden state, and step k + 1 reads (rms(u_k), the true next token), so the drafter can go on
from its own estimate. Each example knows the example one row later in its sequence (`next`).

Training is a few thousand Adam steps of a ~2.3 M-parameter MLP (d_ff 512, K = 1,024) on CPU
(minutes), keeping the weights that did best on the held-out sequences; under
torchrun/accelerate the same function runs data-parallel if the caller wraps the module, but
at this size one core is enough.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from tasc_edge.errors import TascError
from tasc_edge.hidden_head import HiddenHead, rms_normalise
from tasc_edge.model_drafter import expected_accepted
from tasc_edge.vocab_trim import KeptVocab


@dataclass(frozen=True)
class HeadTrainConfig:
    d_ff: int = 512
    steps: int = 3000
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    holdout: float = 0.1  # share of sequences kept out to report accuracy and pick the best weights
    refs: int = 0  # reference outputs of up to this many further train rows per task
    depth: int = 1  # steps the head is trained to chain (1: one token per draft, no feature loss)
    feature_weight: float = 1.0  # weight of the next-state regression against the token loss
    seed: int = 0


@dataclass
class HeadExamples:
    hidden: np.ndarray  # [N, d] float32
    token: np.ndarray  # [N] the token each hidden row produced (the committed one)
    label: np.ndarray  # [N] the target's own argmax after it
    sequence: np.ndarray  # [N] which sequence each example came from (for the holdout split)
    n_sequences: int  # sequences read (some may give no example)
    n_generated: int  # of which target generations: sequences 0 .. n_generated - 1
    next: np.ndarray | None = None  # [N] index of the example one row later in the sequence, or -1

    def save(self, path: Path) -> None:
        import io

        from tasc_edge.files import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, hidden=self.hidden, token=self.token, label=self.label, sequence=self.sequence,
                 next=self.next, counts=np.array([self.n_sequences, self.n_generated]))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "HeadExamples":
        with np.load(path, allow_pickle=False) as z:
            n_seq, n_gen = (int(v) for v in z["counts"])
            return cls(z["hidden"], z["token"], z["label"], z["sequence"], n_seq, n_gen, z["next"])

    @property
    def generated(self) -> np.ndarray:
        """[N] bool: the example comes from a target generation, not a reference output."""
        return self.sequence < self.n_generated


def collect_examples(backend, pairs: Sequence[tuple[list[int], list[int]]], log=print,
                     n_generated: int | None = None) -> HeadExamples:
    """Teacher-force each (prompt, output) through `backend` (a target with hidden-state
    output: llama.cpp, or an ONNX graph with `hidden`) and keep, for every output row whose
    token the target itself would have chosen, its final hidden state and the target's argmax
    one row later. The first `n_generated` pairs (default: all) are the target's generations;
    only they are held out to measure the head, since those are the states it meets."""
    hs, xs, ys, seq_ids, nexts = [], [], [], [], []
    base = 0
    start = time.perf_counter()
    backend.keep_hidden = True
    try:
        for i, (prompt, out) in enumerate(pairs):
            if len(out) < 2:
                continue
            inputs = [prompt[-1], *out[:-1]]  # row r's logits predict out[r]
            if len(prompt) + len(inputs) > backend.n_ctx:
                continue
            backend.prefill(prompt[:-1])
            hidden, choice = [], []
            for j in range(0, len(inputs), backend.n_batch):
                logits = backend.forward(inputs[j : j + backend.n_batch])
                hidden.append(backend.hidden)
                choice.append(np.argmax(logits, axis=-1))
            h, a = np.concatenate(hidden), np.concatenate(choice)
            x = np.asarray(out)
            # row r produced the target's choice a[r]; where the output went on with that very
            # token (x[r] == a[r]), row r + 1 read it: an example labelled with a[r + 1]
            r = np.flatnonzero(x[:-1] == a[:-1])
            hs.append(h[r])
            xs.append(x[r])
            ys.append(a[r + 1])
            seq_ids.append(np.full(len(r), i))
            at = np.minimum(np.searchsorted(r, r + 1), max(len(r) - 1, 0))  # the example at row r + 1
            nexts.append(np.where(r[at] == r + 1, base + at, -1) if len(r) else np.zeros(0, np.int64))
            base += len(r)
            if (i + 1) % 100 == 0:
                log(f"hidden states: {i + 1}/{len(pairs)} sequences ({time.perf_counter() - start:.0f} s)")
    finally:
        backend.keep_hidden = False
    if not sum(len(t) for t in xs):
        raise TascError("no output rows on the target's own path (sequences of two or more tokens "
                        "the target agrees with) to train a hidden head on")
    return HeadExamples(np.concatenate(hs).astype(np.float32), np.concatenate(xs), np.concatenate(ys),
                        np.concatenate(seq_ids), len(pairs), len(pairs) if n_generated is None else n_generated,
                        np.concatenate(nexts))


def train_head(ex: HeadExamples, kept: KeptVocab, head_rows: np.ndarray, embed_rows: np.ndarray,
               cfg: HeadTrainConfig, log=print) -> tuple[HiddenHead, dict]:
    """head_rows [K, d]: the target's output-head rows of the kept ids (the start for w_out);
    embed_rows [K, d]: their input embeddings (the start for the token input)."""
    import torch

    torch.manual_seed(cfg.seed)
    local = kept.to_local()
    y = local[ex.label]
    keep = y >= 0
    x_local = local[ex.token]
    x_local = np.where(x_local >= 0, x_local, kept.k)  # the extra "any other id" row
    rng = np.random.default_rng(cfg.seed)
    seqs = np.unique(ex.sequence[ex.generated])
    held = rng.choice(seqs, size=max(1, int(len(seqs) * cfg.holdout)), replace=False) if cfg.holdout > 0 else []
    test = np.isin(ex.sequence, held) & keep
    train = ~np.isin(ex.sequence, held) & keep
    if train.sum() < cfg.batch:
        raise TascError(f"only {int(train.sum())} training examples for the hidden head; generate more "
                        "(--train-limit) or lower the batch")
    d = head_rows.shape[1]
    h_all = torch.from_numpy(rms_normalise(ex.hidden))
    x_all, y_all = torch.from_numpy(x_local), torch.from_numpy(y)
    if cfg.depth > 1 and ex.next is None:
        raise TascError("a hidden head of depth > 1 needs examples that know their next row")
    next_all = torch.from_numpy(ex.next if ex.next is not None else np.full(len(y), -1, np.int64))
    embed0 = np.vstack([rms_normalise(embed_rows), np.zeros((1, d), np.float32)])
    # w_out starts as the target's own head on normalised states, scaled to its logit range
    scale = float(np.median(np.linalg.norm(ex.hidden, axis=1)) / np.sqrt(d))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Parameter(torch.from_numpy(embed0.astype(np.float32)))
            self.inp = torch.nn.Linear(2 * d, cfg.d_ff)
            self.mix = torch.nn.Linear(cfg.d_ff, d, bias=False)
            torch.nn.init.zeros_(self.mix.weight)  # starts as the target's head on h itself
            self.out = torch.nn.Parameter(torch.from_numpy((head_rows * scale).astype(np.float32)))

        def forward(self, h, x):
            z = torch.nn.functional.silu(self.inp(torch.cat([h, self.embed[x]], dim=-1)))
            u = h + self.mix(z)
            return u @ self.out.T, u

    def rms(u):
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6)

    def unroll(sel: np.ndarray):
        """(logits, labels, u, the next example) per step along each example's sequence: step
        k + 1 reads (rms(u_k), the true next token) for the examples that have one."""
        cur = torch.from_numpy(sel)
        h = h_all[cur]
        for k in range(cfg.depth):
            logits, u = net(h, x_all[cur])
            nxt = next_all[cur]
            yield logits, y_all[cur], u, nxt
            ok = nxt >= 0
            if k + 1 == cfg.depth or not bool(ok.any()):
                return
            h, cur = rms(u[ok]), nxt[ok]

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    idx = np.flatnonzero(train)
    start = time.perf_counter()

    def accuracy(mask: np.ndarray) -> list[float]:
        """Top-1 per step on the examples in `mask`; step k counts only where steps < k were
        right (a draft's k-th token is judged only after the ones before it held)."""
        out: list[float] = []
        if mask.any():
            with torch.no_grad():
                alive = None  # per example of the current step: every earlier step right
                for logits, y, _, nxt in unroll(np.flatnonzero(mask)):
                    right = logits.argmax(-1) == y
                    asked = (y >= 0) if alive is None else alive & (y >= 0)
                    out.append(float(right[asked].float().mean()) if bool(asked.any()) else float("nan"))
                    alive = (right if alive is None else alive & right)[nxt >= 0]
        return out + [float("nan")] * (cfg.depth - len(out))

    def chain_score(acc: list[float]) -> float:
        """Tokens a full-depth draft gets accepted on average: a1 + a1 a2 + ... (= a1 at depth
        1), over the steps some example reached (nan: none did, e.g. no holdout)."""
        reached = list(itertools.takewhile(lambda a: a == a, acc))
        return expected_accepted(reached) if reached else float("nan")

    acc0 = accuracy(test)
    best, best_step, best_state = -1.0, 0, None
    for step in range(cfg.steps):
        loss = torch.zeros(())
        for logits, y, u, nxt in unroll(rng.choice(idx, size=cfg.batch)):
            if bool((y >= 0).any()):
                loss = loss + torch.nn.functional.cross_entropy(logits, y, ignore_index=-1)
            ok = nxt >= 0
            if cfg.depth > 1 and bool(ok.any()):  # u must also be the next row's state
                loss = loss + cfg.feature_weight * torch.nn.functional.mse_loss(u[ok], h_all[nxt[ok]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0 or step + 1 == cfg.steps:
            acc = accuracy(test)
            score = chain_score(acc)
            log(f"hidden head step {step + 1}/{cfg.steps}: loss {loss.item():.3f}, holdout top-1 "
                f"{' / '.join(f'{a:.3f}' for a in acc)}")
            if not score <= best:  # nan (no holdout) keeps the latest weights
                best, best_step = score, step + 1
                best_state = {n: p.detach().clone() for n, p in net.state_dict().items()}
    if best_state is not None:  # the weights that did best on sequences it never trained on
        net.load_state_dict(best_state)
    held_acc, train_acc = accuracy(test), accuracy(train)
    stats = {"examples": int(train.sum()), "holdout_examples": int(test.sum()),
             "dropped_outside_kept": int((~keep).sum()), "train_s": round(time.perf_counter() - start, 1),
             "holdout_top1_before": acc0[0], "holdout_top1": held_acc[0], "train_top1": train_acc[0],
             "best_step": best_step, "generated_sequences": int(len(seqs)),
             "reference_sequences": int(ex.n_sequences - ex.n_generated),
             "reference_examples": int((train & ~ex.generated).sum()), "depth": cfg.depth}
    if cfg.depth > 1:
        stats.update({"holdout_top1_by_step": held_acc, "train_top1_by_step": train_acc,
                      "holdout_expected_accepted": chain_score(held_acc)})
    log(f"hidden head: holdout top-1 {stats['holdout_top1_before']:.3f} -> "
        f"{' / '.join(f'{a:.3f}' for a in held_acc)} ({stats['holdout_examples']} examples), {stats['train_s']} s")
    w = {n: p.detach().numpy().astype(np.float32) for n, p in net.named_parameters()}
    head = HiddenHead(kept, w["inp.weight"], w["inp.bias"], w["mix.weight"], w["embed"], w["out"], cfg.depth)
    return head, stats


def gguf_rows(path: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(output-head rows, input-embedding rows) of `ids` from a GGUF file, dequantized; the
    head is token_embd itself when the file has no output tensor (tied embeddings)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}

    def rows(name: str) -> np.ndarray:
        t = tensors[name]
        full = dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))
        return np.ascontiguousarray(full[ids], dtype=np.float32)

    embed = rows("token_embd.weight")
    head = rows("output.weight") if "output.weight" in tensors else embed
    return head, embed


def export_hidden_head(out: Path, work: Path, backend, fmt: str, tasks: list[str], tables_cfg, top_k: int,
                       hcfg: HeadTrainConfig, state: dict, save_state, log,
                       depths: Sequence[int] = (1,)) -> tuple[dict, list[dict]]:
    """(manifest["drafters"] entries, file entries) for drafter/head-k<K> (depth 1) and
    head-k<K>-d<D> (trained to chain D tokens) of a bundle whose target (`backend`, format
    `fmt`) outputs hidden states. The hidden states are collected once for every depth."""
    if not getattr(backend, "has_hidden", False):
        raise TascError("this bundle's target outputs no hidden states; re-export its model")
    from tasc_edge.export.tables import train_generations
    from tasc_edge.runtime.bundle import file_entry
    from tasc_edge.tasks import load_task, task_sequences
    from tasc_edge.vocab_trim import choose_kept, token_counts

    end = backend.end_of_turn()
    pairs, refs = [], []  # (prompt, target generation), (prompt, reference output)
    for task in tasks:
        name = Path(task).name.removesuffix(".jsonl") or "task"
        loaded = load_task(task)
        rows = loaded.train[: tables_cfg.train_limit] if tables_cfg.train_limit else loaded.train
        table_path = work / f"{name}.npz"
        with_output = [r for r in loaded.train if r.output.strip()]
        ref = task_sequences([r.output for r in with_output], backend.tokenize, end)
        gens = train_generations(backend, rows, ref, tables_cfg, table_path, log)  # the tables step's
        pairs += [(backend.chat_prompt(r.prompt), gens[r.id]) for r in rows if r.id in gens]
        if hcfg.refs:  # further train rows than the generations used: their dataset outputs
            tokens_of = {r.id: seq for r, seq in zip(with_output, ref)}  # tokenized once, above
            refs += [(backend.chat_prompt(r.prompt), tokens_of[r.id])
                     for r in loaded.train[len(rows) : len(rows) + hcfg.refs] if r.id in tokens_of]
    kept = choose_kept(token_counts([g for _, g in pairs], backend.n_vocab), backend.tokenizer_hash,
                       "target", top_k=top_k, always={*backend.stop_tokens, end})
    if fmt == "gguf":
        from tasc_edge.export.gguf_drafter import gguf_step_bytes

        target_bytes = gguf_step_bytes(out / "model.gguf")
    else:
        from tasc_edge.export.onnx import step_bytes

        target_bytes = step_bytes(out / "model.onnx")
    examples: list[HeadExamples] = []  # collected (or read back) once, for every depth
    entries, files = {}, []
    for depth in depths:
        cfg = replace(hcfg, depth=depth)
        variant = f"head-k{top_k}" + (f"-d{depth}" if depth > 1 else "")
        folder = out / "drafter" / variant
        key = f"{state.get('model')}|{len(pairs)}|{len(refs)}|{top_k}|{cfg}"
        if state.get(f"drafter:{variant}") != key or not (folder / "head.npz").is_file():
            t = time.perf_counter()
            if not examples:
                examples.append(_examples(backend, pairs, refs, work, state, save_state, log))
            collect_s = time.perf_counter() - t
            head, stats = train_head(examples[0], kept, *_start_rows(out, fmt, kept), cfg, log)
            stats["collect_s"] = round(collect_s, 1)
            folder.mkdir(parents=True, exist_ok=True)
            head.save(folder / "head.npz")
            kept.save(folder / "kept.npz")
            state.update({f"drafter:{variant}": key, f"train:{variant}": stats})
            save_state(state)
        mine = KeptVocab.load(folder / "kept.npz", backend.tokenizer_hash)
        head_bytes = HiddenHead.load(folder / "head.npz", mine).step_bytes()
        entries[variant] = {
            "kind": "hidden-head", "dir": f"drafter/{variant}", "k": mine.k, "coverage": mine.coverage,
            "calib": mine.calib, "calib_tokens": mine.calib_tokens, "layers": 0, "depth": depth,
            "step_bytes": head_bytes, "target_step_bytes": target_bytes, "c": head_bytes / target_bytes,
            "train": state.get(f"train:{variant}")}
        log(f"hidden head {variant}: K={mine.k}, coverage {mine.coverage:.3f}, {head_bytes / 1e6:.1f} MB "
            f"per step (fp32), c = {head_bytes / target_bytes:.4f}")
        files += [file_entry(out, f, f"hidden-state head {variant}") for f in sorted(folder.iterdir()) if f.is_file()]
    return entries, files


def _examples(backend, pairs, refs, work: Path, state: dict, save_state, log) -> HeadExamples:
    """The hidden states depend on the target and the sequences only, not on K or the
    training settings: kept in the work folder, a re-train skips the slowest step."""
    # keyed on the very token sequences: regenerated text (other settings, same count) is new data
    digest = hashlib.sha256(repr([*pairs, *refs]).encode()).hexdigest()[:16]
    cache, key = work / "head-examples.npz", f"{state.get('model')}|{len(pairs)}|{len(refs)}|{digest}"
    if state.get("head-examples") == key and cache.is_file():
        ex = HeadExamples.load(cache)
        log(f"hidden states: {len(ex.label)} examples from {cache.name} (collected before)")
        return ex
    ex = collect_examples(backend, pairs + refs, log, n_generated=len(pairs))
    ex.save(cache)
    state["head-examples"] = key
    save_state(state)
    return ex


def _start_rows(out: Path, fmt: str, kept: KeptVocab) -> tuple[np.ndarray, np.ndarray]:
    """(output-head rows, input-embedding rows) of the kept ids: where the head starts."""
    if fmt == "gguf":
        return gguf_rows(out / "model.gguf", kept.ids)
    from tasc_edge.runtime.onnx_backend import EMBED_FILE  # the ONNX target's input table, and

    embed_rows = np.ascontiguousarray(np.load(out / EMBED_FILE, mmap_mode="r")[kept.ids], dtype=np.float32)
    return embed_rows, embed_rows  # its output head too (tied)
