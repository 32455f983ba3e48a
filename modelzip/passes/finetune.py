"""finetune: recover accuracy after pruning or quantization, optionally distilled from a teacher.

Light imports only: the training machinery (torch) lives in modelzip.finetuning
and is imported inside ``run``.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from modelzip.passes._distill import TEACHERS, DistillConfig, teacher_files
from modelzip.passes._gradual import GradualPruneConfig
from modelzip.plugin import Pass, PassConfig

__all__ = ["DistillConfig", "FinetuneConfig", "TrainingConfig", "FinetunePass", "GradualPruneConfig", "TEACHERS",
           "teacher_files"]

DEFAULT_EPOCHS = 2  # when neither epochs nor steps is given
# Peak lr when `lr` is not given. sgd 0.01 without augmentation had the smallest mean and worst-case
# drop over three architectures in 2-epoch recoveries after channel pruning (0.05 was better on two
# and lost 4 pp on ResNet-20): BENCHMARKS.md, "Fine-tuning defaults"; scripts/bench_unseen.py --sweep.
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.001}


class TrainingConfig(PassConfig):
    """The training settings of finetune, shared by merge (which trains a student from its teachers)."""

    epochs: int | None = Field(
        None, ge=1, le=10_000,
        description=f"passes over the training split (default {DEFAULT_EPOCHS} when "
                    "`steps` is not given); give epochs or steps, not both")
    steps: int | None = Field(None, ge=1, le=100_000_000, description="optimizer steps instead of epochs")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (Nesterov momentum) or adamw")
    lr: float = Field(DEFAULT_LR["sgd"], gt=0,
                      description="peak learning rate (default 0.01 for sgd, 0.001 for adamw)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty (sgd) / decoupled decay (adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum (Nesterov when > 0); sgd only")
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        "cosine", description="lr schedule, stepped per batch: cosine decay to 0; onecycle (lr/25 "
                              "up to lr, then down to ~0); constant")
    warmup: float | None = Field(
        None, ge=0, lt=1,
        description="linear warmup as a FRACTION of all optimizer steps (0.05 = the first 5%); "
                    "default 0, or 0.3 for onecycle")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    grad_clip: float | None = Field(None, gt=0, description="max global L2 norm of the gradients (null: off)")
    augment: Literal["auto", "none"] = Field(
        "none", description="none (default): the training images as they are, which recovered a pruned, "
                            "trained model better in 2-epoch fine-tunes (BENCHMARKS.md); auto: random crop "
                            "(2-px padding) + flip on fashion-mnist, 4-px on cifar10, nothing on mnist or "
                            "other datasets")
    batch_size: int | None = Field(
        None, ge=1, le=65536, description="training batch (default data.batch_size)")
    patience: int | None = Field(
        None, ge=1, le=10_000, description="stop after this many epochs without a better validation accuracy "
                                "(null: run every epoch); the best validation epoch is kept either way")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Fill the defaults that depend on other keys, so the resolved recipe shows them."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("epochs") is None and data.get("steps") is None:
            data["epochs"] = DEFAULT_EPOCHS
        if "lr" not in data and data.get("optimizer") in DEFAULT_LR:
            data["lr"] = DEFAULT_LR[data["optimizer"]]
        return data

    @field_validator("steps")
    @classmethod
    def _epochs_or_steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("epochs") is not None:
            raise ValueError("give `epochs` or `steps`, not both")
        return value

    @field_validator("momentum")
    @classmethod
    def _momentum_is_sgd(cls, value: float, info: ValidationInfo) -> float:
        # Runs only when momentum is given: AdamW would silently ignore it.
        if info.data.get("optimizer") == "adamw":
            raise ValueError("momentum applies to optimizer: sgd only (adamw uses its betas)")
        return value


class FinetuneConfig(TrainingConfig):
    distill: DistillConfig | None = Field(
        None, description="knowledge distillation, e.g. {teacher: baseline, alpha: 0.5, temperature: 4}; "
                          "null: plain fine-tuning on the labels")
    prune: GradualPruneConfig | None = Field(
        None, exclude_if=lambda value: value is None,  # unset: params, and so cache keys, as before
        description="prune while training, e.g. {method: magnitude, sparsity: 0.9, schedule: gradual}: "
                    "sparsity rises on a cubic ramp over `start`..`end` of the steps (the way to high "
                    "sparsity); null: no pruning (exact zeros already there stay zero either way)")


class FinetunePass(Pass):
    name = "finetune"
    summary = "Fine-tune the torch model (optionally distilled from a teacher), keeping pruned zeros"
    Config = FinetuneConfig
    consumes = ("torch",)
    version = "2"  # 2: kept zeros are +0.0 (they were -0.0 for negative weights)
    distributed = True  # under torchrun: DistributedDataParallel across the processes

    def input_files(self, config: FinetuneConfig) -> list[str]:
        return teacher_files(config.distill)

    def run(self, artifact, config: FinetuneConfig, ctx):
        from modelzip.passes._training import run_finetune

        return run_finetune(artifact, config, ctx, pass_name=self.name)
