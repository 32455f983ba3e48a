"""Torch -> ONNX export and the checks every exported file must pass."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelzip.errors import PassError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODULE_MAP_FILE = "node_modules.json"  # node name -> torch module, beside every exported file


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, ...], path: Path, *, opset: int,
                exporter: str, dynamic_batch: bool, pass_name: str, step: int | None,
                tasks: tuple[str, ...] | None = None) -> None:
    """Export ``module`` (in eval mode, on CPU) and run onnx.checker's full check. A multi-task
    model (``tasks``: model.tasks) gets one output per task, named after it, in that order."""

    module = copy.deepcopy(module).cpu().eval()  # never mutate the caller's module
    if tasks is not None:
        _outputs_in_task_order(module, tasks)
    example = (torch.zeros(input_shape),)
    outputs = list(tasks) if tasks is not None else [OUTPUT_NAME]
    try:
        with _quiet():
            _export(module, example, path, opset, exporter, dynamic_batch, outputs)
    except Exception as exc:  # exporters raise many types; the message names the op/layer
        raise PassError(
            f"ONNX export failed: {type(exc).__name__}: {_first_lines(exc)}", pass_name=pass_name,
            step=step, fix="try `exporter: torchscript` (or dynamo), or another `opset`; "
                           "run with --debug for the full trace") from exc
    _strip_debug_metadata(path)
    check_onnx(path, pass_name=pass_name, step=step)


def check_onnx(path: Path, *, pass_name: str, step: int | None) -> None:
    """onnx.checker's full check (with shape inference); a failure is the pass's."""
    problem = checker_problem(path)
    if problem is not None:
        raise PassError(f"the ONNX file fails onnx.checker: {problem}", pass_name=pass_name, step=step)


def checker_problem(path: Path) -> str | None:
    """What onnx.checker's full check (with shape inference) finds wrong, or None."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        return _first_lines(exc)
    return None


def _strip_debug_metadata(path: Path) -> None:
    """Drop the dynamo exporter's per-node debug metadata (stack traces, FX nodes).

    It is not part of the model but doubles a small file's size, which would skew every size
    ratio. The node -> module mapping is kept beside the file (node_modules.json) for passes
    that select nodes by module name.
    """
    import json

    import onnx

    model = onnx.load(str(path))
    mapping = {}
    for node in model.graph.node:
        scopes = [p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        if scopes and node.name:  # scopes end with the aten op; the module is the one before it
            names = [s for s in json.loads(scopes[0].replace("'", '"'))[:-1] if s]
            mapping[node.name] = names[-1] if names else ""
        del node.metadata_props[:]
        node.doc_string = ""
    for info in model.graph.value_info:
        del info.metadata_props[:]
    onnx.save(model, str(path))
    (path.parent / MODULE_MAP_FILE).write_text(json.dumps(mapping, indent=1))


def _outputs_in_task_order(module: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Make (the private copy) ``module`` return a tuple in task order, whatever its forward
    returns (a dict's key order is the model's own). The forward is replaced on the instance
    rather than wrapped in a parent module, so the exported nodes keep their module names
    (node_modules.json, quantize's `exclude:` patterns)."""
    from modelzip import tasks

    forward = module.forward
    module.forward = lambda x: tasks.ordered(forward(x), names)  # one input, as export_onnx gives


def _export(module, example, path: Path, opset: int, exporter: str, dynamic_batch: bool,
            outputs: list[str]) -> None:
    names = {"input_names": [INPUT_NAME], "output_names": outputs, "opset_version": opset}
    if exporter == "dynamo":
        dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        program = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dynamic,
                                    optimize=True, verbose=False, **names)
        program.save(str(path), external_data=False)
    else:
        axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic_batch else None
        torch.onnx.export(module, example, str(path), dynamo=False, dynamic_axes=axes, **names)


_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet():
    """The exporters print progress, version-conversion notes and deprecation chatter to
    stdout, warnings and loggers; keep the run's output clean (errors still raise)."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _first_lines(exc: BaseException, n: int = 3) -> str:
    return " ".join(str(exc).strip().splitlines()[:n])


def check_parity(module: torch.nn.Module, path: Path, images: torch.Tensor, *, atol: float,
                 rtol: float, pass_name: str, step: int | None,
                 tasks: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Compare torch and onnxruntime outputs on the same inputs (every task's output of a
    multi-task model, by name); raise if any is out of tolerance."""
    from modelzip import tasks as task_outputs
    from modelzip.evaluation.accuracy import onnx_all_outputs

    module = module.eval()
    with torch.no_grad():
        output = module(images)
    got_all = onnx_all_outputs(path, images.numpy())
    if tasks is None:
        pairs = [(OUTPUT_NAME, task_outputs.primary(output), next(iter(got_all.values())))]
    else:
        expected_all = task_outputs.by_name(output, tasks)
        pairs = [(name, expected_all[name], got_all[name]) for name in tasks]
    worst, agreement, failure = 0.0, 1.0, None
    for name, expected, got in pairs:
        expected = expected.detach().cpu().numpy()
        diff = np.abs(expected - got)
        bound = atol + rtol * np.abs(expected)
        worst = max(worst, float(diff.max()))
        agreement = min(agreement, float((expected.argmax(1) == got.argmax(1)).mean()))
        if failure is None and not bool((diff <= bound).all()):
            failure = (name, float(diff.max()), np.unravel_index(np.argmax(diff - bound), diff.shape))
    report = {"samples": int(images.shape[0]), "max_abs_diff": worst, "atol": atol, "rtol": rtol,
              "top1_agreement": agreement}
    if tasks is not None:
        report["outputs"] = list(tasks)
    if failure is not None:
        name, largest, worst_at = failure
        where = f"output {name!r}, " if tasks is not None else ""
        raise PassError(
            "torch and onnxruntime outputs disagree beyond the tolerance",
            pass_name=pass_name, step=step,
            got=f"max |diff| {largest:.3g} ({where}worst at sample {worst_at[0]}, output {worst_at[1]})",
            expected=f"|diff| <= {atol} + {rtol}*|torch|",
            fix="raise parity_atol/parity_rtol if the difference is benign, or try the other exporter")
    return report
