"""Training: a mapper (and GPT-2, unless frozen) on caption batches, resumable to the step.

AdamW (fused); linear warm-up over a fraction of all steps, then linear decay (as ClipCap's schedule);
gradient clipping; bf16 autocast on a GPU; a seeded data order per epoch; validation loss after
each epoch, the best epoch kept; with ``patience``, training stops once that many epochs pass
without a lower validation loss. ``out/`` holds:

    last/     mapper (config.json + model.safetensors), GPT-2 if trained, state.pt (optimizer,
              scheduler, step, RNG; loaded with ``weights_only=True``)
    best/     the same weights at the best validation loss, and ``metrics.json``
    dvclive/  losses and learning rate per step, for ``dvc plots`` (or ``live_dir``)

A run killed at any moment restarts from ``last/`` at the step it had reached (the batches it
skips are the ones it had already trained on) and ends with the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from clipmemcap.core.atomic import write_json
from clipmemcap.training.datasets import collate, epoch_order, prefetch
from clipmemcap.core.devices import resolve_device
from clipmemcap.core.config import TrainConfig
from clipmemcap.core.layout import VOCABULARY
from clipmemcap.model.captioner import CaptionModel
from clipmemcap.model.mappers import load_mapper, save_mapper
from clipmemcap.model.prefix_lm import load_gpt2, save_gpt2

log = logging.getLogger(__name__)


def save_weights(model: CaptionModel, folder: Path) -> None:
    """Mapper always; GPT-2 only when it is trained (a frozen one is the input model); the
    output layer's restricted vocabulary, when it has one."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_mapper(model.mapper, tmp / "mapper")
    if not model.lm.frozen:
        save_gpt2(model.lm.gpt2, tmp / "gpt2")
    if model.lm.vocabulary is not None:
        write_json(tmp / VOCABULARY, model.lm.vocabulary.tolist())
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_weights(model: CaptionModel, folder: Path) -> None:
    model.mapper.load_state_dict(load_mapper(folder / "mapper").state_dict())
    if (folder / "gpt2").exists():
        model.lm.gpt2.load_state_dict(load_gpt2(folder / "gpt2").state_dict())


def save_state(state: dict, path: Path) -> None:
    """``torch.save`` to ``path`` atomically. It is saved under the same file name in a private
    folder first, then moved: torch names the archive inside after the file, so a temporary name
    would make every checkpoint's bytes (and DVC's hash of them) differ from run to run."""
    staged = path.parent / ".staged" / path.name
    staged.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, staged)
    staged.replace(path)
    staged.parent.rmdir()


def _promote_complete_checkpoint(out: Path) -> None:
    """A run killed between the renames of a checkpoint swap left no last/ but a complete
    last.next/: that one is the checkpoint to resume from, not a reason to start over."""
    last, new = out / "last", out / "last.next"
    if not (last / "state.pt").exists() and (new / "state.pt").exists():
        shutil.rmtree(last, ignore_errors=True)
        new.rename(last)


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


@torch.no_grad()
def validation_loss(model: CaptionModel, data, tokenizer, cfg: TrainConfig, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), cfg.batch_size):
        batch = collate([data[i] for i in range(start, min(len(data), start + cfg.batch_size))],
                        tokenizer, cfg.max_tokens).to(device)
        n = int(batch.token_mask.sum() + len(batch.keys))  # targets: tokens + one end-of-text each
        total, count = total + float(model(batch)) * n, count + n
    model.train()
    return total / max(1, count)


def train(model: CaptionModel, train_data, val_data, tokenizer, cfg: TrainConfig, out: Path,
          live_dir: Path | None = None, on_step: Callable[[int], None] | None = None,
          fingerprint: dict | None = None) -> dict:
    """Train (or resume) into ``out``, logging to ``live_dir`` (default ``out/dvclive``);
    returns the best epoch's metrics. ``fingerprint`` (JSON-able: model and data settings) is
    stored with the checkpoint; a checkpoint with another fingerprint is discarded, not resumed."""
    live_dir = live_dir or out / "dvclive"
    fingerprint = json.dumps({"train": cfg.model_dump(mode="json"), **(fingerprint or {})}, sort_keys=True)
    device = resolve_device(cfg.device)
    model.to(device).train()
    torch.manual_seed(cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for every tensor's update (CPU and CUDA), which matters once the step is small
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, max(1, round(cfg.warmup_fraction * total))))
    step, best = 0, {"val_loss": float("inf"), "epoch": -1}
    _promote_complete_checkpoint(out)
    state = torch.load(out / "last" / "state.pt", weights_only=True) if (out / "last" / "state.pt").exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning("%s holds a run of other settings: starting afresh", out)
        state = None
    if state is None:  # nothing of an earlier run may leak into this one
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(live_dir, ignore_errors=True)
    else:
        load_weights(model, out / "last")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, best = state["step"], json.loads(state["best"])
    # dvcyaml=False: the stages declare their plots; dvclive must not edit dvc.yaml itself
    live = Live(str(live_dir), resume=step > 0, save_dvc_exp=False, dvcyaml=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def checkpoint() -> None:
        """last.next/ is complete once its state.pt exists (written last, atomically); then it
        takes last/'s place by renames, so a kill at any moment leaves one complete checkpoint."""
        save_weights(model, out / "last.next")
        save_state({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "rng": torch.get_rng_state(), "best": json.dumps(best), "fingerprint": fingerprint},
                   out / "last.next" / "state.pt")
        shutil.rmtree(out / "last.old", ignore_errors=True)
        if (out / "last").exists():
            (out / "last").rename(out / "last.old")
        (out / "last.next").rename(out / "last")
        shutil.rmtree(out / "last.old", ignore_errors=True)

    def batches(first: int):
        """The batches of steps first, first + 1, ...: each epoch in its seeded order."""
        for epoch in range(first // per_epoch, cfg.epochs):
            order = epoch_order(len(train_data), cfg.seed, epoch)
            for index in range(first - epoch * per_epoch if epoch == first // per_epoch else 0, per_epoch):
                chosen = order[index * cfg.batch_size : (index + 1) * cfg.batch_size]
                yield collate([train_data[i] for i in chosen], tokenizer, cfg.max_tokens)

    progress = tqdm(total=total, initial=step, desc="train", unit="step")
    stopped = best.get("stopped_early", False)  # a finished run that stopped early stays stopped
    for batch in ([] if stopped else prefetch(batches(step))):
        batch = batch.to(device)
        with autocast:
            loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        live.log_metric("train/loss", float(loss.detach()))
        live.log_metric("train/lr", scheduler.get_last_lr()[0])
        live.next_step()
        progress.update()
        if step % per_epoch == 0:  # end of an epoch: validate, keep the best
            val = validation_loss(model, val_data, tokenizer, cfg, device)
            live.log_metric("val/loss", val)  # the learning curve, one point an epoch
            if val < best["val_loss"]:
                best = {"val_loss": val, "epoch": step // per_epoch - 1, "step": step}
                save_weights(model, out / "best")
                write_json(out / "best" / "metrics.json", best)
            if cfg.patience is not None and step // per_epoch - 1 - best["epoch"] >= cfg.patience:
                log.info("validation loss has not improved for %d epochs: stopping at step %d", cfg.patience, step)
                stopped = best["stopped_early"] = True
        if step % cfg.checkpoint_every == 0 or step == total or stopped:
            checkpoint()
        if on_step:
            on_step(step)
        if stopped:
            break
    progress.close()
    live.end()
    return best
