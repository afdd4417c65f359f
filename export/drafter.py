"""A VocabTrim drafter for a target: built from the target itself, distilled, head trimmed.

No smaller model shares SmolLM2's or Gemma 3's tokenizer in the package registry, so the
drafter is a *self-drafter*: the target's embeddings, its first `layers` decoder layers, its
final norm and its (tied) head. Untrained, such an early exit agrees with the target almost
never (0 of 37 positions measured here for 4 of SmolLM2's 30 layers), so a short
distillation trains the drafter's layers and norm on the target's own output distribution
for prompt + target-generated sequences; embeddings and head stay the target's. By default
(`distill_vocab="kept"`) the KL runs over the task's kept ids - the union of the largest kept
set of each calibration source (export/vocabtrim.py) -, the tokens a trimmed drafter can
propose; for Gemma 3's 262,144-row head the full-vocabulary KL cost ~12 s per step on this
CPU, over 4,096 ids a step costs the decoder layers' share. The drafter is distilled *once*;
trimming then only drops head rows, exactly as VocabTrim prunes an existing drafter, so
"untrimmed vs trimmed at K" compares the same network. Any same-tokenizer HF checkpoint a
user brings (`--drafter-model`) goes through the same trimming and export.

Runs on a CPU (2 cores here) in minutes for SmolLM2; on GPUs it is plain torch, so
`accelerate launch` / torchrun scale it like any training script (it is not the bottleneck).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasc_edge.errors import TascError, require


@dataclass
class DrafterConfig:
    layers: int = 4  # decoder layers kept from the target (self-drafter)
    model: str | None = None  # a same-tokenizer HF checkpoint instead of the self-drafter
    calib: str = "target"  # target | drafter | reference | raw, comma-separated for several
    top_k: tuple[int, ...] = ()  # one trimmed drafter per K
    coverage: float | None = 0.99  # ...or the fewest tokens covering this share of calib tokens
    untrimmed: bool = True  # also export the full-head drafter, the comparison point
    distill_steps: int = 300  # 0 = no distillation
    distill_vocab: str = "kept"  # kept: KL over the largest kept id set; full: over the whole vocabulary
    lr: float = 3e-4
    max_len: int = 768  # tokens per distillation sequence (longer ones are cut from the left)
    seed: int = 0


def load_target(hf_dir: Path):
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    return model.eval()


def build_self_drafter(target, layers: int):
    """The target's first `layers` decoder layers between its embeddings and its norm + head."""
    n = target.config.num_hidden_layers
    if not 1 <= layers < n:
        raise TascError(f"--drafter-layers must be between 1 and {n - 1} for this {n}-layer target")
    drafter = copy.deepcopy(target)  # deepcopy keeps the embedding/head tie
    drafter.model.layers = drafter.model.layers[:layers]
    drafter.config.num_hidden_layers = layers
    if getattr(drafter.config, "layer_types", None):  # Gemma 3: sliding/full pattern per layer
        drafter.config.layer_types = drafter.config.layer_types[:layers]
    return drafter


def distill(drafter, target, sequences: list[list[int]], cfg: DrafterConfig, log=print,
            ids=None) -> dict:
    """Train the drafter's decoder layers and final norm to match the target's next-token
    distribution (KL(target || drafter)) on `sequences`: over the target ids `ids` (both
    distributions renormalised over them), or the full vocabulary when `ids` is None."""
    torch = require("torch", "export")
    import torch.nn.functional as F

    if not sequences:
        raise TascError("no distillation sequences (empty calibration corpus)")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    seqs = [s[-cfg.max_len:] for s in sequences if len(s) >= 2]
    # heads are frozen, so only their rows for `ids` are ever multiplied (a self-drafter's
    # head is the target's; a drafter a user brings has its own)
    pick = None if ids is None else torch.as_tensor(ids, dtype=torch.long)

    def head_rows(model):
        weight = model.get_output_embeddings().weight.detach()
        return weight if pick is None else weight[pick]

    rows, student_rows = head_rows(target), head_rows(drafter)
    log(f"distillation over {rows.shape[0]} of {target.config.vocab_size} head rows")
    start = time.perf_counter()
    # the target's final hidden states, once: its logits are head(h), recomputed per step,
    # which is far cheaper than storing [tokens x vocab] logits or re-running 30 layers
    hidden = []
    with torch.no_grad():
        for s in seqs:
            hidden.append(target.get_decoder()(torch.tensor([s])).last_hidden_state[0])
    teacher_s = time.perf_counter() - start
    log(f"distillation: target hidden states for {len(seqs)} sequences "
        f"({sum(map(len, seqs))} tokens) in {teacher_s:.0f} s")
    for p in drafter.parameters():
        p.requires_grad_(False)
    trainable = [*drafter.model.layers.parameters(), *drafter.model.norm.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / cfg.distill_steps)))
    drafter.train()
    order: list[int] = []
    losses = []
    t0 = time.perf_counter()
    for step in range(cfg.distill_steps):
        if not order:
            order = list(range(len(seqs)))
            rng.shuffle(order)
        i = order.pop()
        with torch.no_grad():
            teacher = F.log_softmax(_soft_cap(hidden[i] @ rows.T, target.config), dim=-1)
        h = drafter.get_decoder()(torch.tensor([seqs[i]])).last_hidden_state[0]
        student = F.log_softmax(_soft_cap(h @ student_rows.T, drafter.config), dim=-1)
        loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == cfg.distill_steps:
            rate = (step + 1) / (time.perf_counter() - t0)
            log(f"distill step {step + 1}/{cfg.distill_steps}: KL {sum(losses[-25:]) / len(losses[-25:]):.3f}"
                f" ({rate:.2f} steps/s, ETA {(cfg.distill_steps - step - 1) / rate:.0f} s)")
    drafter.eval()
    return {"sequences": len(seqs), "tokens": sum(map(len, seqs)), "steps": cfg.distill_steps,
            "vocab": int(rows.shape[0]),
            "kl_first": sum(losses[:25]) / max(1, len(losses[:25])) if losses else None,
            "kl_last": sum(losses[-25:]) / max(1, len(losses[-25:])) if losses else None,
            "seconds": time.perf_counter() - start, "teacher_seconds": teacher_s,
            "threads": torch.get_num_threads()}


def top1_agreement(drafter, target, sequences: list[list[int]], ids=None) -> float:
    """Share of positions where the drafter's argmax equals the target's (a sanity figure).
    With `ids` (the head rows distillation trained) the drafter's argmax is taken over those
    rows only, as its trimmed heads compute it: the other rows were never trained and, for a
    shallow drafter, often win a full-vocabulary argmax they will never get to make."""
    torch = require("torch", "export")
    rows = None if ids is None else torch.as_tensor(np.asarray(ids), dtype=torch.long)
    hit = total = 0
    with torch.no_grad():
        for s in sequences:
            tokens = torch.tensor([s])
            logits = drafter(tokens).logits[0]
            a = logits.argmax(-1) if rows is None else rows[logits[:, rows].argmax(-1)]
            b = target(tokens).logits[0].argmax(-1)
            hit += int((a == b).sum())
            total += len(s)
    return hit / max(1, total)


def save_drafter(drafter, tokenizer_dir: Path, out: Path) -> Path:
    """An HF checkpoint (weights + the target's tokenizer files) for the ONNX exporter."""
    import shutil

    from tasc_edge.export.onnx import TOKENIZER_FILES

    out.mkdir(parents=True, exist_ok=True)
    drafter.save_pretrained(out)
    for name in (*TOKENIZER_FILES, "vocab.json", "merges.txt", "tokenizer.model"):
        if name != "config.json" and (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    (out / ".complete").write_text("ok\n")
    return out


def _soft_cap(logits, config):
    cap = getattr(config, "final_logit_softcapping", None)
    if not cap:
        return logits
    import torch

    return torch.tanh(logits / cap) * cap
