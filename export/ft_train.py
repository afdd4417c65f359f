"""`tasc-edge ft train`: LoRA fine-tuning (peft) plus trainable new-token rows, via accelerate.

One script for a 2-core CPU and for a GPU cluster: `tasc-edge ft train ...` runs in-process;
`accelerate launch -m tasc_edge.cli ft train ...` (or torchrun) runs it data-parallel, each
process taking its slice of every batch. Batches are a pure function of (seed, step), so a run
resumed from a checkpoint sees exactly the batches it would have seen.

What trains: LoRA adapters on every attention and MLP projection, and - for an expanded
checkpoint (`ft expand`) - the new rows of the embedding (and of the head, if untied; a tied
head shares them). The old rows stay frozen: a gradient hook zeroes their gradient and their
optimizer group has no weight decay, so AdamW leaves them bit-for-bit unchanged.

Checkpoints (`accelerator.save_state`: adapters, optimizer, scheduler, RNG) go to
<out>/.ckpt/step-N every --save-every steps, written under a temporary name and renamed; a
re-run with the same --out resumes from the newest. The result is a merged HF checkpoint in
<out> (written the same way) that `tasc-edge export --model <out>` takes.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasc_edge.errors import TascError, require

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    task: str
    out: str
    model: str | None = None  # HF folder (e.g. from `ft expand`) or .gguf; None = packaged SmolLM2
    steps: int = 200
    batch_size: int = 8  # rows per optimizer step, over all processes
    lr: float = 1e-3  # LoRA (the recipe measured in README)
    embed_lr: float = 2e-2  # new token rows
    lora_r: int = 16
    lora_alpha: int = 32
    max_len: int = 512  # longer examples are skipped (and counted), never truncated
    train_limit: int | None = None  # first N train rows
    save_every: int = 50
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: no | bf16 | fp16 (GPUs)
    stop_after: int | None = None  # end this run after N steps (checkpointed): time-sliced or
    # preemptible machines; a re-run resumes


def run_train(cfg: TrainConfig, log=print) -> Path:
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    peft = require("peft", "ft")
    accelerate = require("accelerate", "ft")
    from tasc_edge.export.ft_data import encode_example, hf_source, train_rows
    from tasc_edge.export.ft_expand import read_expansion

    out = Path(cfg.out)
    ckpts = out.parent / f".{out.name}.ckpt"
    acc = accelerate.Accelerator(mixed_precision=cfg.mixed_precision)
    with acc.main_process_first():  # one process stages a GGUF into torch, the others reuse it
        source = hf_source(cfg.model, out.parent / f".{out.name}.work", log)
    expansion = read_expansion(Path(source))
    tok = transformers.AutoTokenizer.from_pretrained(source)
    encoded = [encode_example(tok, r, cfg.max_len) for r in train_rows(cfg.task, cfg.train_limit)]
    examples = [e for e in encoded if e is not None]
    if not examples:
        raise TascError(f"{cfg.task}: no train example fits --max-len {cfg.max_len}")
    if acc.is_main_process:
        log(f"{len(examples)} train examples ({len(encoded) - len(examples)} over --max-len skipped), "
            f"{sum(len(e[0]) for e in examples) / len(examples):.0f} tokens each on average")

    torch.manual_seed(cfg.seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=TARGET_MODULES,
        task_type="CAUSAL_LM"))
    row_params = _train_new_rows(model, expansion)
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    groups = [{"params": lora, "lr": cfg.lr, "weight_decay": 0.0}]
    if row_params:
        groups.append({"params": row_params, "lr": cfg.embed_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, min(20, cfg.steps // 10), cfg.steps)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)

    start, losses = _resume(acc, ckpts, log)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tqdm = require("tqdm", "export").tqdm
    bar = tqdm(total=cfg.steps, initial=start, disable=not acc.is_main_process, desc="ft train")
    started = time.perf_counter()
    model.train()
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    for step in range(start, end):
        rows = batch_rows(len(examples), cfg.batch_size, cfg.seed, step)[acc.process_index::acc.num_processes]
        ids, mask, labels = _collate([examples[i] for i in rows], pad, acc.device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        acc.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(acc.gather(loss.detach()[None]).mean()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        if ((step + 1) % cfg.save_every == 0 or step + 1 == end) and step + 1 < cfg.steps:
            _checkpoint(acc, ckpts, step + 1, losses)
    bar.close()
    if end < cfg.steps:
        log(f"stopped after step {end} of {cfg.steps} (--stop-after); re-run to resume")
        return ckpts
    seconds = time.perf_counter() - started
    if acc.is_main_process:
        _write_merged(acc.unwrap_model(model), tok, Path(source), out, cfg, losses, seconds, start, log)
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(ckpts, ignore_errors=True)
    return out


def batch_rows(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Row indices of global batch `step`: epochs of a seeded permutation, read in order."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size].tolist()


def _train_new_rows(model, expansion: dict | None) -> list:
    """Make the expanded rows trainable (old rows masked to zero gradient); [] if none."""
    if not expansion:
        return []
    torch = require("torch", "export")
    base = expansion["base_vocab"]
    params = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = module.weight if module is not None else None
        if w is None or any(w is p for p in params):
            continue  # a tied head is the embedding itself
        mask = torch.zeros(w.shape[0], 1)
        mask[base:] = 1.0
        w.requires_grad_(True)
        w.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype))
        params.append(w)
    return params


def _collate(batch: list[tuple[list[int], int]], pad: int, device):
    torch = require("torch", "export")
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (seq, n_prompt) in enumerate(batch):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])  # the loss is on outputs only
    return ids.to(device), mask.to(device), labels.to(device)


def _checkpoint(acc, ckpts: Path, step: int, losses: list[float]) -> None:
    tmp = ckpts / f".step-{step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"step": step, "losses": losses}))
        tmp.rename(ckpts / f"step-{step}")
        for old in ckpts.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _resume(acc, ckpts: Path, log) -> tuple[int, list[float]]:
    done = sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not done:
        return 0, []
    acc.load_state(str(done[-1]))
    progress = json.loads((done[-1] / "progress.json").read_text())
    log(f"resuming from {done[-1]} (step {progress['step']})")
    return progress["step"], progress["losses"]


def _write_merged(model, tok, source: Path, out: Path, cfg: TrainConfig, losses: list[float],
                  seconds: float, resumed_at: int, log) -> None:
    torch = require("torch", "export")
    merged = model.merge_and_unload()
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for name in ("expansion.json", "base.json"):
        if (source / name).is_file():
            shutil.copy(source / name, tmp / name)
    info = {"format": "tasc-edge.ft-train/1", "config": asdict(cfg), "source": str(source),
            "steps": cfg.steps, "resumed_at": resumed_at, "seconds": seconds,
            "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
            "losses": losses, "hardware": {"platform": platform.platform(),
                                           "processor": platform.processor() or platform.machine(),
                                           "torch_threads": torch.get_num_threads(),
                                           "device": str(next(merged.parameters()).device)}}
    (tmp / "ft.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"fine-tuned checkpoint written to {out}: loss {info['loss_first10']:.3f} -> "
        f"{info['loss_last10']:.3f}, {seconds:.0f} s this run")
