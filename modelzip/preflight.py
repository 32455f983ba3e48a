"""A cheap check that the input model, its checkpoint and the data fit together.

Run once, before any pass, on ONE small batch of the evaluation split. Without
it a recipe whose ``model.input_shape`` does not match the images, a model
with fewer outputs than the dataset has classes, or a checkpoint full of NaN
fails later, far from its cause (a torch.export trace, an accuracy of 0, an
ONNX parity tolerance), or not at all. Each check raises an InputError (exit
code 2) whose ``where`` is the recipe key to change:

- NaN/inf in the weights: ``model.checkpoint`` (``model.source`` when there is none);
- ``input_shape[1:]`` is not the shape of the dataset's images: ``model.input_shape``;
- the model raises on the images: ``model.in_channels`` when its first convolution takes
  another channel count, else ``model.source``;
- the images hold NaN/inf, or labels are negative: ``data.dataset``;
- the output is not a float [batch, classes] tensor: ``model.source``; NaN/inf in it:
  ``model.checkpoint`` (``model.source``);
- fewer outputs than classes (the dataset's count, or the largest label + 1):
  ``model.args`` (``num_classes``);
- a multi-task model (``model.tasks``): a task the output lacks (dict key or tuple position):
  ``model.tasks``; targets that lack a task, or {task: int} targets without ``model.tasks``:
  ``data.dataset`` / ``model.tasks``; then each task's output is checked as above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from modelzip import tasks
from modelzip.errors import InputError, ModelzipError
from modelzip.recipe import ModelSpec
from modelzip.sources.models import describe_exception, user_code

if TYPE_CHECKING:
    from modelzip.sources.data import DataBundle

PROBE_BATCH = 8  # images in the one forward pass: enough to see a batch dimension, cheap on a CPU
_SHOWN = 3  # bad tensors named in a message


@dataclass(frozen=True)
class PreflightResult:
    """What the checks saw, for a log line or the report."""

    sample_shape: tuple[int, ...]  # one image as the data yields it, e.g. (1, 28, 28)
    batch: int  # images in the probe batch
    output_classes: int  # width of the model's output
    label_classes: int  # classes the labels need: the dataset's count, or the largest label + 1


def preflight(module: nn.Module, data: DataBundle, spec: ModelSpec) -> PreflightResult:
    """Check ``module`` (loaded from ``spec``) against ``data`` (a DataBundle) on one batch.

    Returns what it saw, or raises an InputError naming the recipe key to
    change. The module runs in eval mode under ``torch.no_grad`` and is left in
    the mode it came in.
    """
    weights_key = "model.checkpoint" if spec.checkpoint else "model.source"
    _check_finite_weights(module, weights_key)
    sample_shape = tuple(data.sample_shape)
    _check_input_shape(spec, sample_shape, data)
    images, labels = _probe_batch(data, min(PROBE_BATCH, data.batch_size), spec)
    output = _forward(module, images, spec)
    if spec.tasks is not None:
        return _check_tasks(output, images, labels, data, spec, weights_key)
    classes = _check_output(output, images.shape[0], weights_key)
    needed = _label_classes(labels, data)
    if classes < needed:
        raise _too_few_outputs(classes, needed, spec)
    return PreflightResult(sample_shape=sample_shape, batch=images.shape[0], output_classes=classes,
                           label_classes=needed)


def _check_tasks(output: object, images: torch.Tensor, labels: dict[str, torch.Tensor], data: DataBundle,
                 spec: ModelSpec, weights_key: str) -> PreflightResult:
    """Each task of model.tasks has an output (named or in order), checked like a single one."""
    try:
        outputs = tasks.by_name(output, spec.tasks)
    except tasks.TaskMismatch as exc:
        raise InputError(f"the model does not return the task {exc.task!r} named in model.tasks",
                         where="model.tasks", got=exc.got, expected=exc.expected,
                         fix="name the tasks as the model's forward returns them (its dict keys, or one "
                             "name per tuple position), or return an output per task") from exc
    seen = []
    for name, logits in outputs.items():
        classes = _check_output(logits, images.shape[0], weights_key, task=name)
        needed = _label_classes(labels[name], data, task=name)
        if classes < needed:
            raise InputError(f"the model's {name!r} output has {classes} classes, but the dataset's "
                             f"{name!r} labels need {needed}", where="model.tasks",
                             got=f"{classes} outputs for task {name!r}", expected=f"at least {needed}",
                             fix=f"build the {name!r} head with {needed} outputs, or check that model.tasks "
                                 "lists the tasks in the order the model returns them")
        seen.append((classes, needed))
    return PreflightResult(sample_shape=tuple(data.sample_shape), batch=images.shape[0],
                           output_classes=min(c for c, _ in seen), label_classes=min(n for _, n in seen))


# --------------------------------------------------------------------------- the weights


def _check_finite_weights(module: nn.Module, where: str) -> None:
    bad = []
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        # A finite sum proves every entry finite (NaN and inf propagate), at a fifth of the cost;
        # an infinite one may be overflow, so only then look at each entry.
        if not tensor.sum().isfinite() and not tensor.isfinite().all():
            bad.append(f"{name} ({int(tensor.isnan().sum())} NaN, {int(tensor.isinf().sum())} inf "
                       f"of {tensor.numel()})")
    if bad:
        more = f" (+{len(bad) - _SHOWN} more tensors)" if len(bad) > _SHOWN else ""
        raise InputError(
            "the model's weights hold NaN or inf", where=where, got="; ".join(bad[:_SHOWN]) + more,
            expected="finite weights",
            fix="use a checkpoint saved before training diverged (every later result would be NaN)"
                if where == "model.checkpoint" else "check how the model factory initializes its weights",
        )


# --------------------------------------------------------------------------- the input


def _check_input_shape(spec: ModelSpec, sample_shape: tuple[int, ...], data: DataBundle) -> None:
    declared = tuple(spec.input_shape[1:])
    if declared == sample_shape:
        return
    suggested = [spec.input_shape[0], *sample_shape]
    raise InputError(
        "the shape does not match the dataset's images", where="model.input_shape",
        got=f"{list(spec.input_shape)}, but the dataset's images are {_shape(sample_shape)}",
        expected=f"[batch, {', '.join(map(str, sample_shape))}]",
        fix=f"set `model.input_shape: {suggested}`"
            + (", or `data.image_size` to resize the images" if _is_imagefolder(data) else ""),
    )


def _is_imagefolder(data: DataBundle) -> bool:
    return type(getattr(data.eval, "dataset", data.eval)).__name__ == "ImageFolder"


def _probe_batch(data: DataBundle, size: int, spec: ModelSpec) -> tuple[torch.Tensor, object]:
    with user_code("reading a batch of the eval split", where="data.dataset",
                   fix="make every item an (image tensor of one shape, integer label) pair"):
        images, labels = next(iter(data.loader(data.eval, size, named=False)))
    if spec.tasks is not None:
        try:
            labels = tasks.named_targets(labels, spec.tasks)
        except tasks.TargetMismatch as exc:
            raise InputError(f"the dataset's targets have no task {exc.task!r} of model.tasks",
                             where="data.dataset", got=exc.got, expected=exc.expected,
                             fix="return {task: int} targets with every task of model.tasks, or list in "
                                 "model.tasks only the tasks the dataset labels") from exc
    if tasks.is_multi(labels) and spec.tasks is None:
        raise InputError("the dataset gives {task: int} targets, but the recipe names no tasks",
                         where="model.tasks", got=f"targets with tasks {sorted(map(str, labels))}",
                         expected="model.tasks naming the model's outputs",
                         fix=f"add `model.tasks: {list(map(str, labels))}` (in the order the model returns "
                             "them, for a tuple)")
    if tasks.is_multi(labels):
        for name, column in labels.items():
            _check_labels(torch.as_tensor(column), name)
    else:
        labels = torch.as_tensor(labels)
    if not images.isfinite().all():
        bad = int((~images.isfinite()).sum())
        raise InputError("the dataset's images hold NaN or inf", where="data.dataset",
                         got=f"{bad} of {images.numel()} values in the first batch",
                         expected="finite pixel values", fix="check the dataset's loading and normalization")
    if not tasks.is_multi(labels):
        _check_labels(labels, "")
    return images, labels


def _check_labels(labels: torch.Tensor, task: str) -> None:
    if labels.numel() and int(labels.min()) < 0:
        raise InputError("the dataset has negative labels" + (f" for task {task!r}" if task else ""),
                         where="data.dataset", got=f"label {int(labels.min())}",
                         expected="class indices 0, 1, 2, ...", fix="map the labels to 0 .. classes-1")


def _forward(module: nn.Module, images: torch.Tensor, spec: ModelSpec) -> object:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(images.to(*_device_and_dtype(module)))
    except ModelzipError:
        raise
    except (Exception, SystemExit) as exc:
        raise _rejected(module, exc, spec, tuple(images.shape)) from exc
    finally:
        module.train(was_training)


def _device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    return (torch.device("cpu"), torch.float32) if first is None else (first.device, first.dtype)


def _rejected(module: nn.Module, exc: BaseException, spec: ModelSpec,
              batch_shape: tuple[int, ...]) -> InputError:
    """The model raised on the data's images: a channel count the stem does not take, or another shape."""
    got = f"on images of shape {_shape(batch_shape)}: {describe_exception(exc)}"
    stem = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    channels = batch_shape[1] if len(batch_shape) == 4 else None
    if stem is not None and channels is not None and stem.in_channels != channels:
        return InputError(
            f"the model's first convolution takes {stem.in_channels} channels; the images have {channels}",
            where="model.in_channels", got=got, expected=f"a model taking {_shape(batch_shape[1:])} images",
            fix=f"set `model.in_channels: {channels}` to adapt the first convolution",
        )
    return InputError(
        "the model does not accept the dataset's images", where="model.source", got=got,
        expected=f"a model taking {_shape(batch_shape[1:])} images, as in model.input_shape "
                 f"{list(spec.input_shape)}",
        fix="build the model for images of this size (model.source / model.args), "
            "or use a dataset whose images it takes (and set model.input_shape to match)",
    )


# --------------------------------------------------------------------------- the output


def _check_output(output: object, batch: int, weights_key: str, *, task: str = "") -> int:
    """The number of classes in ``output``, which must be finite [batch, classes] float logits
    (``task``: which output of a multi-task model, for the message)."""
    of = f"the model's {task!r} output" if task else "the model's output"
    if not isinstance(output, torch.Tensor):
        got = f"a {type(output).__name__}"
    elif output.ndim != 2 or output.shape[0] != batch or not output.is_floating_point():
        got = f"a {output.dtype} tensor of shape {_shape(tuple(output.shape))} for {batch} images"
    else:
        got = None
    if got is not None:
        raise InputError(f"{of} is not a [batch, classes] tensor of logits",
                         where="model.source", got=got,
                         expected=f"a float tensor of shape ({batch}, classes)",
                         fix="return the logits tensor from forward() (e.g. wrap the model so it does)"
                             + ("" if task else "; a model with one output per task names them in "
                                                "model.tasks"))
    if not output.isfinite().all():
        bad = int((~output.isfinite()).sum())
        raise InputError(f"{of} holds NaN or inf on the dataset's images" if task else
                         "the model outputs NaN or inf on the dataset's images", where=weights_key,
                         got=f"{bad} of {output.numel()} outputs on {batch} images", expected="finite logits",
                         fix="check the checkpoint and the model's forward (a division by zero, a log of 0?)")
    return int(output.shape[1])


def _label_classes(labels: torch.Tensor, data: DataBundle, *, task: str | None = None) -> int:
    """Classes the labels need: the dataset's count, or more when a label goes beyond it.

    (A ``<module>:<callable>`` dataset's count is inferred from its training
    labels, so an evaluation label beyond it is not necessarily a mistake.)
    ``task``: the labels of one task of a multi-task dataset.
    """
    largest = int(labels.max()) if labels.numel() else -1
    every = _every_label(data, task)
    if every is not None and every.numel():
        largest = max(largest, int(every.max()))
    return max((data.num_classes or 0) if task is None else 0, largest + 1)


def _every_label(data: DataBundle, task: str | None) -> torch.Tensor | None:
    """Every eval label, where an in-memory dataset holds them at no cost (one task's column)."""
    labels, names = getattr(data.eval, "labels", None), getattr(data.eval, "tasks", None)
    if not isinstance(labels, torch.Tensor):
        return None
    if task is None:
        return labels if names is None else None
    return labels[:, names.index(task)] if names is not None and task in names else None


def _too_few_outputs(classes: int, needed: int, spec: ModelSpec) -> InputError:
    if "num_classes" in spec.args:
        fix = f"set `model.args.num_classes: {needed}`"
    else:
        fix = f"build the model with {needed} outputs (model.args)"
    if spec.checkpoint:
        fix += f" and use a checkpoint trained on these {needed} classes"
    return InputError(
        f"the model has {classes} outputs, but the dataset has {needed} classes", where="model.args",
        got=f"{classes} outputs (model.args {spec.args})",
        expected=f"at least {needed} outputs, one per class",
        fix=fix + ", or use a dataset with at most that many classes",
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
