"""The one supervised training loop of modelzip (fine-tuning passes and baseline training).

Lean per batch: the loss stays a device tensor (no ``.item()`` per batch; it is
checked for NaN/inf every ``CHECK_EVERY`` batches and at the end of the epoch),
augmentation is one vectorized gather, and zero-masks are one fused multiply.

Deterministic on the CPU for a seed: each epoch reseeds torch (dropout) and
uses its own shuffle and augmentation seed, so a run resumed after epoch k
reproduces an uninterrupted one exactly. Process-layout decisions (model
wrapping, batch sharding, who writes) go through ``runtime`` (DDP-ready).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from modelzip import tasks
from modelzip.evaluation.accuracy import torch_accuracy
from modelzip.finetuning.augment import Augment
from modelzip.finetuning.checkpoint import CheckpointStore, snapshot
from modelzip.finetuning.distill import CrossEntropy
from modelzip.finetuning.masks import ZeroMasks
from modelzip.finetuning.optim import make_optimizer, make_schedule
from modelzip.finetuning.runtime import LocalRuntime

if TYPE_CHECKING:  # pragma: no cover - a plain value object; its module reads recipe specs
    from modelzip.sources.data import DataBundle

CHECK_EVERY = 16  # batches between NaN checks (each one is a device sync)
_AUGMENT_STREAM = 1


@dataclass(frozen=True)
class TrainSettings:
    epochs: int | None = None  # exactly one of epochs / steps
    steps: int | None = None  # optimizer steps; the last epoch is cut short
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only (Nesterov when > 0)
    schedule: str = "cosine"  # cosine | onecycle | constant (see optim.py)
    warmup: float | None = None  # fraction of all optimizer steps
    grad_clip: float | None = None  # max global L2 norm of the gradients
    batch_size: int | None = None  # default: data.batch_size
    patience: int | None = None  # epochs without a better validation accuracy before stopping
    restore_best: bool = True  # end with the best-validation epoch's weights
    seed: int = 0
    device: str = "cpu"
    augment: Augment = field(default_factory=Augment)


@dataclass
class Hooks:
    log: Callable[[str], None] | None = None
    track: Callable[[int, str], Any] | None = None  # (total, description) -> context giving advance(n)
    checkpoints: CheckpointStore | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None  # after the epoch's checkpoint
    # Per optimizer step (e.g. gradual pruning), on the unwrapped model being trained:
    # on_train_start(model, steps taken, total steps) once before the first batch, also after
    # a resume (steps taken > 0); on_step(steps taken) after every optimizer step, after the
    # zero masks; selectable(steps taken) at an epoch's end: False keeps that epoch from
    # being chosen as the best (e.g. before the final sparsity is reached).
    on_train_start: Callable[[nn.Module, int, int], None] | None = None
    on_step: Callable[[int], None] | None = None
    selectable: Callable[[int], bool] | None = None


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # per epoch: loss, val_accuracy, seconds, samples_per_s, lr
    best_epoch: int | None  # None without a validation split
    best_val_accuracy: float | None
    stopped_early: bool
    resumed_after_epoch: int | None  # the checkpointed epoch this call started from
    total_steps: int
    wall_time_s: float
    sparsity: dict[str, Any]  # the zero masks kept (see masks.py)


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, *, epoch: int, iteration: int, step: int, lr: float, value: float) -> None:
        self.epoch, self.iteration, self.step, self.lr, self.value = epoch, iteration, step, lr, value
        super().__init__(f"loss is {value} at epoch {epoch}, iteration {iteration} (lr {lr:.3g})")


def fit(model: nn.Module, data: DataBundle, settings: TrainSettings, objective=None,
        hooks: Hooks | None = None, runtime: LocalRuntime | None = None) -> FitResult:
    """Train ``model`` in place on ``data.train``; it ends in eval mode on ``settings.device``."""
    trainer = _Trainer(model, data, settings, objective or CrossEntropy(), hooks or Hooks(),
                       runtime or LocalRuntime())
    return trainer.run()


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A different seed per epoch (and per ``stream``), with no overlap between (seed, epoch) pairs."""
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, epoch] + ([stream] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class _Trainer:
    def __init__(self, model, data: DataBundle, settings: TrainSettings, objective, hooks: Hooks,
                 runtime) -> None:
        self.settings, self.data, self.hooks, self.runtime = settings, data, hooks, runtime
        self.device = torch.device(settings.device)
        self.model = model.to(self.device)
        self.net = runtime.wrap(self.model)  # what forward/backward run through (DDP later)
        self.objective = objective.to(self.device)
        self.batch_size = settings.batch_size or data.batch_size
        self.batches_per_epoch = runtime.batches_per_epoch(math.ceil(len(data.train) / self.batch_size))
        self.epochs, self.total_steps = _plan(settings, self.batches_per_epoch)
        self.optimizer = make_optimizer(self.model, settings.optimizer, lr=settings.lr,
                                        weight_decay=settings.weight_decay, momentum=settings.momentum)
        self.schedule = make_schedule(self.optimizer, settings.schedule, total_steps=self.total_steps,
                                      warmup=settings.warmup)
        self.masks = ZeroMasks.capture(self.model)
        self.amp_dtype, self.scaler = _mixed_precision(self.device)
        self.history: list[dict[str, Any]] = []
        self.best = {"epoch": None, "accuracy": None, "state": None}
        self.step, self.start_epoch, self.stopped, self.resumed = 0, 1, False, None

    # ------------------------------------------------------------------ epochs

    def run(self) -> FitResult:
        started = time.perf_counter()
        self._resume()
        if self.hooks.on_train_start is not None:
            self.hooks.on_train_start(self.model, self.step, self.total_steps)
        for epoch in range(self.start_epoch, self.epochs + 1):
            if self.stopped or self.step >= self.total_steps:
                break
            record = self._epoch(epoch)
            self._select(epoch, record["val_accuracy"])
            self.history.append(record)
            self._log(record)
            self.stopped = self._patience_ran_out(epoch)
            self._save(epoch)
            if self.hooks.on_epoch_end is not None:
                self.hooks.on_epoch_end(record)
        self._finish()
        return FitResult(self.history, self.best["epoch"], self.best["accuracy"],
                         stopped_early=self.stopped, resumed_after_epoch=self.resumed,
                         total_steps=self.step, wall_time_s=time.perf_counter() - started,
                         sparsity=self.masks.summary())

    def _epoch(self, epoch: int) -> dict[str, Any]:
        seed = epoch_seed(self.settings.seed, epoch)
        torch.manual_seed(seed)  # dropout draws: the same for this epoch in a resumed run
        # Augmentation gets its own stream: sharing dropout's would correlate the two.
        generator = torch.Generator().manual_seed(epoch_seed(self.settings.seed, epoch, _AUGMENT_STREAM))
        batches = self.data.batches("train", self.batch_size, shuffle=True, seed=seed)
        count = min(self.batches_per_epoch, self.total_steps - self.step)
        started = time.perf_counter()
        loss, samples = self._train_batches(epoch, itertools.islice(self.runtime.shard(batches), count),
                                            count, generator)
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "loss": loss, "val_accuracy": self._validate(),
                "seconds": round(seconds, 3), "samples_per_s": round(samples / max(seconds, 1e-9), 1),
                "lr": self._lr_at(self.step - 1)}

    def _train_batches(self, epoch: int, batches, count: int, generator) -> tuple[float, int]:
        """Mean loss over the samples of ``count`` batches, and the number of samples."""
        self.net.train()
        losses = torch.zeros(count, device=self.device)
        sizes: list[int] = []
        track = self.hooks.track or (lambda total, description: contextlib.nullcontext(lambda n=1: None))
        with track(count, f"epoch {epoch}/{self.epochs}") as advance:
            for i, (images, labels) in enumerate(batches):
                losses[i] = self._train_step(images, labels, generator).detach()
                sizes.append(tasks.batch_size(labels))
                if (i + 1) % CHECK_EVERY == 0:
                    self._check_finite(losses, i + 1 - CHECK_EVERY, i + 1, epoch)
                advance(1)
        done = len(sizes)
        self._check_finite(losses, done - done % CHECK_EVERY, done, epoch)
        weights = torch.tensor(sizes, dtype=losses.dtype, device=self.device)
        total = self.runtime.sum(torch.stack([(losses[:done] * weights).sum(), weights.sum()]))
        return float(total[0] / total[1].clamp(min=1)), int(total[1])

    def _train_step(self, images: Tensor, labels: Tensor, generator) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        labels = tasks.to_device(labels, self.device)
        if self.settings.augment.active:
            images = self.settings.augment(images, generator)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss = self.objective(images, self.net(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.step += 1
        self.masks.apply()  # after the step: pruned weights must stay exactly zero
        if self.hooks.on_step is not None:
            self.hooks.on_step(self.step)
        return loss

    def _check_finite(self, losses: Tensor, start: int, end: int, epoch: int) -> None:
        if end <= start:
            return
        bad = ~torch.isfinite(losses[start:end])
        if not bool(bad.any()):
            return
        first = start + int(bad.nonzero()[0])
        step = self.step - (end - first)  # the 0-based optimizer step that produced it
        lr = self._lr_at(step)
        raise NonFiniteLoss(epoch=epoch, iteration=first + 1, step=step + 1, lr=lr,
                            value=float(losses[first]))

    def _lr_at(self, step: int) -> float:
        """The learning rate used by 0-based optimizer step ``step``."""
        return self.settings.lr * self.schedule.lr_lambdas[0](max(step, 0))

    # ------------------------------------------------------------------ validation and selection

    def _validate(self) -> float | None:
        if not len(self.data.validation) or not self.runtime.is_main:
            return None
        return torch_accuracy(self.model, self.data.batches("validation"))

    def _select(self, epoch: int, accuracy: float | None) -> None:
        """Keep the best validation epoch (the earliest one on ties) among the selectable ones."""
        if self.hooks.selectable is not None and not self.hooks.selectable(self.step):
            return
        if accuracy is None or (self.best["accuracy"] is not None and accuracy <= self.best["accuracy"]):
            return
        state = snapshot(self.model.state_dict()) if self.settings.restore_best else None
        self.best = {"epoch": epoch, "accuracy": accuracy, "state": state}

    def _patience_ran_out(self, epoch: int) -> bool:
        patience, best = self.settings.patience, self.best["epoch"]
        stop = patience is not None and best is not None and epoch - best >= patience
        return self.runtime.agree(stop)

    def _finish(self) -> None:
        last = self.history[-1]["epoch"] if self.history else None
        if self.settings.restore_best and self.best["state"] is not None and self.best["epoch"] != last:
            self.model.load_state_dict(self.best["state"])
        self.model.eval()

    # ------------------------------------------------------------------ resume

    def _save(self, epoch: int) -> None:
        store = self.hooks.checkpoints
        if store is None or not self.runtime.is_main:
            return
        store.save({"epoch": epoch, "step": self.step, "stopped": self.stopped,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                    "best": self.best, "history": self.history})

    def _resume(self) -> None:
        store = self.hooks.checkpoints
        state = store.load(self.device) if store is not None else None
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.best, self.history = state["best"], list(state["history"])
        self.step, self.stopped = state["step"], state["stopped"]
        self.start_epoch = self.resumed = state["epoch"]
        self.start_epoch += 1
        self._log_line(f"resuming after epoch {state['epoch']} (checkpoint in {store.path.parent})")

    # ------------------------------------------------------------------ logging

    def _log(self, record: dict[str, Any]) -> None:
        accuracy = "n/a" if record["val_accuracy"] is None else f"{record['val_accuracy']:.4f}"
        self._log_line(f"epoch {record['epoch']}/{self.epochs}  loss {record['loss']:.4f}  "
                       f"{record['samples_per_s']:,.0f} samples/s  val_acc {accuracy}  "
                       f"lr {record['lr']:.3g}  {record['seconds']:.1f}s")

    def _log_line(self, message: str) -> None:
        if self.hooks.log is not None and self.runtime.is_main:
            self.hooks.log(message)


def _plan(settings: TrainSettings, batches_per_epoch: int) -> tuple[int, int]:
    """(epochs, optimizer steps) for ``epochs:`` or ``steps:``."""
    if batches_per_epoch < 1:
        raise ValueError("the training split is empty")
    if settings.steps is not None:
        return math.ceil(settings.steps / batches_per_epoch), settings.steps
    if settings.epochs is None:
        raise ValueError("give epochs or steps")
    return settings.epochs, settings.epochs * batches_per_epoch


def _mixed_precision(device: torch.device):
    """(autocast dtype or None, grad scaler): bf16 where the GPU has it, fp16 + scaling otherwise."""
    if device.type != "cuda":
        return None, torch.amp.GradScaler("cpu", enabled=False)  # disabled: a pass-through
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, torch.amp.GradScaler("cuda", enabled=False)
    return torch.float16, torch.amp.GradScaler("cuda")
