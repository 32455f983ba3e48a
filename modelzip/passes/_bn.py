"""BatchNorm recalibration after a pass that changes layers (prune, lowrank): the shared
parameter and the step's report entry. The work is ``modelzip.finetuning.batchnorm``.

Light (no torch): both pass modules import it at module level; ``recalibrated`` imports torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from modelzip.context import PassContext

# 512 images: BN statistics of a few hundred images are within a few percent of the full
# split's, and 512 is 2 batches at the default batch size of 256 (on CPU, well under a second
# for the zoo's CNNs). 0 switches it off.
RECALIBRATE_IMAGES = 512
# Validation images behind the before/after accuracies: at 80% the standard error on 2,000
# images is sqrt(0.8 * 0.2 / 2000) = 0.9 points, small next to the drops recalibration mends.
ACCURACY_IMAGES = 2000

RecalibrateBN = Annotated[int, Field(
    ge=0, le=100_000,
    description="re-estimate BatchNorm running statistics afterwards on this many training images "
                "(forward passes only, no training); the report gives validation accuracy before and "
                "after; 0: off")]


def recalibrated(details: dict[str, Any], module: nn.Module, images: int, ctx: PassContext, *,
                 changed: bool = True) -> dict[str, Any]:
    """``details`` plus a ``bn_recalibration`` entry, after recalibrating ``module`` in place on
    ``images`` shuffled training images (the step's seed); the outcome is appended to the summary.

    The entry: ``layers`` (BatchNorm layers with running statistics), ``images`` (used; 0: none),
    ``accuracy_split``/``accuracy_images``/``accuracy_before``/``accuracy_after`` (torch, on the
    first :data:`ACCURACY_IMAGES` of the validation split; None when it is empty) and ``note``
    (why something was skipped, else None). ``changed`` False: the pass left every layer as it
    was, so the statistics are kept.
    """
    from modelzip.finetuning.batchnorm import batchnorm_layers

    layers = len(batchnorm_layers(module))
    entry = {"layers": layers, "images": 0, "accuracy_split": None, "accuracy_images": 0,
             "accuracy_before": None, "accuracy_after": None, "kept": None, "note": None}
    if not layers:
        entry["note"] = "no BatchNorm layers with running statistics"
    elif images == 0:
        entry["note"] = "off (recalibrate_bn: 0)"
    elif not changed:  # the statistics still describe the layers: nothing to mend
        entry["note"] = "the pass changed no layer"
    else:
        entry.update(_recalibrate(module, images, ctx))
        phrase = _phrase(entry)
        details = {**details, "summary": f"{details['summary']}; {phrase}" if details.get("summary") else phrase}
    return {**details, "bn_recalibration": entry}


def _recalibrate(module: nn.Module, images: int, ctx: PassContext) -> dict[str, Any]:
    import torch

    from modelzip.evaluation.accuracy import torch_accuracy
    from modelzip.evaluation.records import accuracy_noise
    from modelzip.evaluation.runtime import module_device
    from modelzip.finetuning.batchnorm import recalibrate_batchnorm
    from modelzip.finetuning.checkpoint import snapshot
    from modelzip.sources.data import subset

    data = ctx.data
    validation = subset(data.validation, torch.arange(min(len(data.validation), ACCURACY_IMAGES)))
    home = module_device(module)
    module.to(ctx.device)
    try:
        accuracy = (lambda: torch_accuracy(module, data.loader(validation))) if len(validation) else None
        before = accuracy() if accuracy else None
        saved = snapshot(dict(module.named_buffers()))
        used = recalibrate_batchnorm(module, data.batches("train", shuffle=True, seed=ctx.seed), images)
        after = accuracy() if accuracy and used else before
        # Where the pass left the statistics valid (e.g. an untouched first layer), fresh ones from a
        # few hundred images can be worse: keep the previous ones when they validate clearly better
        # (by more than twice the standard error of the measurement, so noise decides nothing).
        kept_original = (after is not None and before is not None
                         and after < before - accuracy_noise(before, len(validation)))
        if kept_original:
            _restore(module, saved)
    finally:
        module.to(home)
    notes = []
    if kept_original:
        notes.append("the recalibrated statistics validated worse: the previous ones were kept")
    if not used:
        notes.append("the training split is empty: statistics kept")
    elif used < images:
        notes.append(f"the training split has {used} images, fewer than recalibrate_bn: {images}")
    if not len(validation):
        notes.append("the validation split is empty (data.val_samples: 0): accuracy not measured")
    return {"images": used, "accuracy_split": "validation" if len(validation) else None,
            "accuracy_images": len(validation), "accuracy_before": before, "accuracy_after": after,
            "kept": "previous" if kept_original else "recalibrated", "note": "; ".join(notes) or None}


def _restore(module: nn.Module, saved: dict[str, Any]) -> None:
    """Put back the buffers (BatchNorm running statistics) saved by ``snapshot``."""
    import torch

    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(saved[name])


def _phrase(entry: dict[str, Any]) -> str:
    if not entry["images"]:
        return "BN not recalibrated: no training images"
    head = f"BN recalibrated on {entry['images']} images"
    if entry["accuracy_before"] is None:
        return f"{head} (no validation split to measure it)"
    phrase = f"{head}: val {entry['accuracy_before']:.1%} -> {entry['accuracy_after']:.1%}"
    return phrase + (" (worse: previous statistics kept)" if entry.get("kept") == "previous" else "")
