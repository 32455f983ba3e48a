"""The recipe: typed, validated data, checked in full before any weights load.

``load_recipe`` reports every problem at once, each with its key path, YAML
line and a did-you-mean where one helps. Pass parameters are validated by the
pass's own ``Config`` model, found through the plugin registry.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from modelzip.errors import InputError, RecipeError, RecipeProblem, clip_repr
from modelzip.plugin import CROSS_FIELD, ArtifactKind, PassConfig, PathText, cross_field_error
from modelzip.registry import PassRegistry, default_registry, suggest
from modelzip.target import TargetConfig
from modelzip.target_registry import TargetRegistry, default_targets
from modelzip.tasks import MAX_TASKS, TASK_NAME
from modelzip.yamlsource import MAX_BYTES, MAX_DEPTH, YamlDocument, YamlInputError, format_path, parse_yaml

RECIPE_VERSION = 1
BUILTIN_DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "multi-fashion")
# Image channels of each built-in dataset (imagefolder images are converted to RGB).
DATASET_CHANNELS = {"fashion-mnist": 1, "mnist": 1, "cifar10": 3, "imagefolder": 3, "multi-fashion": 1}
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ONNX_SOURCE = "onnx:"  # model.source "onnx:<file>.onnx": an fp32 ONNX file, run through ONNX passes only


def onnx_file_of(source: object) -> str | None:
    """The path an "onnx:<file>" model.source names, as written; None for any other source."""
    if isinstance(source, str) and source.startswith(ONNX_SOURCE):
        return source[len(ONNX_SOURCE):].strip()
    return None


# Upper bounds below are far past any real use; they stop values that would only hang
# or exhaust memory (`batch_size: 1e30` is an int to pydantic) and say so at validation.
MAX_BATCH = 65536
MAX_SAMPLES = 1_000_000_000  # image counts: more than any dataset this runs on
MAX_DIM = 65536  # one axis of input_shape
MAX_INPUT_ELEMENTS = 1 << 30  # one example input: 4 GiB of float32


class Section(BaseModel):
    # Floats are finite everywhere: `.inf` or `.nan` would switch a check off or poison a run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_source(value: str) -> str:
    """A torch model's source as a recipe writes it (a merge teacher's; model.source also takes onnx:)."""
    if not _CALLABLE.match(value):
        raise ValueError('expected "torchvision:<name>" or "<module>:<callable>" (model.source also takes '
                         '"onnx:<file>.onnx")')
    return value


class ModelSpec(Section):
    source: str = Field(description='"torchvision:<name>", "<module>:<callable>", "modelzip.zoo:<name>", '
                                    'or "onnx:<file>.onnx" (an fp32 ONNX file; then only ONNX passes apply)')
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    checkpoint: PathText | None = Field(
        None, description="state_dict file (.pt/.pth), loaded with weights_only=True")
    trust_checkpoint: bool = Field(False, description="allow a fully pickled module (runs code from the file)")
    input_shape: tuple[int, ...] = Field(description="example input, batch first, e.g. [1, 1, 28, 28]")
    in_channels: int | None = Field(
        None, ge=1, le=MAX_DIM, description="adapt the first convolution to this many input channels"
    )
    # Unset: left out of dumps, so single-task models keep their ids (and cache keys) as before.
    tasks: tuple[str, ...] | None = Field(
        None, exclude_if=lambda value: value is None, min_length=1, max_length=MAX_TASKS,
        description="names of a multi-task model's outputs: its dict keys, or its tuple positions in "
                    "order; the dataset's targets are then {task: int} (default: one task)")
    task_weights: dict[str, Annotated[float, Field(ge=0, le=1000)]] | None = Field(
        None, exclude_if=lambda value: value is None,
        description="finetune/qat loss = sum of weight x each task's loss (default 1 each), "
                    "e.g. {cls: 1.0, rot: 0.5}; needs `tasks`")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        bad = [name for name in value if not TASK_NAME.match(name)]
        if bad:
            raise ValueError(f"task names are identifiers (letters, digits, _), not {bad}")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each task is named once, but {repeated} repeat")
        return value

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        path = onnx_file_of(value)
        if path is None:
            return check_source(value)
        if not path.endswith(".onnx"):
            raise ValueError('expected "onnx:<path to a .onnx file>", relative to the recipe')
        return value

    @property
    def onnx_file(self) -> str | None:
        """The path an "onnx:" source names, as written (None for a torch source)."""
        return onnx_file_of(self.source)

    @model_validator(mode="after")
    def _onnx_carries_its_weights(self) -> ModelSpec:
        if self.onnx_file is None:
            return self
        torch_only = [key for key in ("checkpoint", "args", "in_channels", "trust_checkpoint")
                      if getattr(self, key)]  # unset, null, {} and false all mean "not given"
        if torch_only:
            raise ValueError(
                f"{', '.join(torch_only)} {'applies' if len(torch_only) == 1 else 'apply'} to a torch model, but "
                f"model.source is an ONNX file, which holds its graph and weights. Fix: remove "
                f"{', '.join(torch_only)}, or name the torch factory (and checkpoint) as model.source")
        return self

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not 2 <= len(value) <= 8 or any(d < 1 for d in value):
            raise ValueError("expected 2 to 8 positive dimensions, batch first")
        if any(d > MAX_DIM for d in value):
            raise ValueError(f"each dimension is at most {MAX_DIM}")
        if math.prod(value) > MAX_INPUT_ELEMENTS:
            raise ValueError(f"one example input may hold at most {MAX_INPUT_ELEMENTS:,} elements "
                             f"(this one: {math.prod(value):,})")
        return value


class Normalize(Section):
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in value):
            raise ValueError("every std must be > 0")
        return value


class DataSpec(Section):
    dataset: str = Field(description=f"one of {', '.join(BUILTIN_DATASETS)} or <module>:<callable>")
    root: PathText | None = Field(None, description="dataset directory; default search order in README")
    download: bool = Field(False, description="allow torchvision to download when absent")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH, description="evaluation and default training batch size")
    limit_train: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="use only the first N training images")
    limit_eval: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="use only the first N evaluation images")
    val_samples: int = Field(5000, ge=0, le=MAX_SAMPLES, description="validation subset carved from train")
    normalize: Normalize | None = Field(None, description="override the dataset's mean/std")
    image_size: int | None = Field(
        None, ge=1, le=MAX_DIM, description="imagefolder: resize to this square size")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for <module>:<callable>")

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value in BUILTIN_DATASETS or _CALLABLE.match(value):
            return value
        hint = suggest(value, list(BUILTIN_DATASETS))
        raise ValueError(
            f"unknown dataset {clip_repr(value)}" + (f"; {hint}" if hint else "")
            + f" (built-in: {', '.join(BUILTIN_DATASETS)}, or <module>:<callable>)"
        )

    @model_validator(mode="after")
    def _options_apply(self) -> DataSpec:
        """Options the chosen dataset would ignore or reject, found before any data loads."""
        builtin = self.dataset in BUILTIN_DATASETS
        problems: list[tuple[tuple[str, ...], str, Any]] = []
        if self.normalize is not None and not builtin:
            problems.append((("normalize",), "`normalize` applies only to built-in datasets (a "
                             "<module>:<callable> dataset normalizes its own images); remove it", None))
        elif self.normalize is not None:
            channels = DATASET_CHANNELS[self.dataset]
            for key in ("mean", "std"):
                values = getattr(self.normalize, key)
                if len(values) != channels:
                    problems.append((("normalize", key), f"{self.dataset} images have {channels} channel"
                                     f"{'s' if channels > 1 else ''}, so `normalize.{key}` needs {channels} "
                                     f"value{'s' if channels > 1 else ''}, not {len(values)}; give one per "
                                     "channel or remove `normalize` for the defaults", list(values)))
        if self.image_size is not None and self.dataset != "imagefolder":
            problems.append((("image_size",), "`image_size` applies only to dataset: imagefolder (only "
                             "imagefolder resizes images); remove it", self.image_size))
        if self.args and builtin:
            problems.append((("args",), "`args` applies only to a <module>:<callable> dataset; remove it",
                             None))
        if problems:
            raise cross_field_error(type(self).__name__, problems)
        return self


def task_key_problems(values: dict[str, Any], tasks: tuple[str, ...] | None,
                      path: tuple[str, ...]) -> list[tuple[tuple[str, ...], str, Any]]:
    """Keys of a per-task mapping that ``model.tasks`` does not name (with a did-you-mean)."""
    if tasks is None:
        return [(path, "per-task values need `model.tasks` naming the tasks; give one number for a "
                       "single-task model, or add `model.tasks`", sorted(values))]
    problems = []
    for key in values:
        if key not in tasks:
            hint = suggest(key, list(tasks))
            problems.append((path + (key,), f"unknown task {clip_repr(key)}" + (f"; {hint}" if hint else "")
                             + f" (model.tasks: {', '.join(tasks)})", None))
    return problems


def _fraction_per_task(value: Any) -> float | dict[str, float]:
    """A fraction in [0, 1] for every task, or {task: fraction}: one problem per key, not one per
    branch of a union."""
    def fraction(x: Any) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
            raise ValueError("input should be a number from 0 to 1, or {task: number}")
        return float(x)

    if isinstance(value, dict):
        return {str(task): fraction(x) for task, x in value.items()}
    return fraction(value)


# One number for every task, or {task: number}.
PerTask = Annotated[float | dict[str, float], PlainValidator(_fraction_per_task), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
              {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}}]})]


class Gates(Section):
    max_accuracy_drop: PerTask | None = Field(
        None, description="absolute, final vs input model; a multi-task model: every task, or {task: drop}")
    min_accuracy: PerTask | None = Field(
        None, description="final top-1 accuracy; a multi-task model: every task, or {task: accuracy}")
    max_drop_vs_teacher: PerTask | None = Field(
        None, description="after a `merge` pass: each task's final accuracy at most this below its teacher's "
                          "(eval split, absolute); every task, or {task: drop}")

    def per_task(self, name: str, tasks: tuple[str, ...]) -> dict[str, float]:
        """``name``'s threshold for each task it applies to (one number applies to all)."""
        value = getattr(self, name)
        if value is None:
            return {}
        return dict(value) if isinstance(value, dict) else dict.fromkeys(tasks, value)
    min_size_ratio: float | None = Field(None, gt=0, description="fp32 baseline ONNX bytes / final bytes")
    min_speedup: float | None = Field(None, gt=0, description="ORT latency at data.batch_size, baseline / final")


class Evaluation(Section):
    threads: int | None = Field(
        None, ge=1, le=256, description="ORT intra-op threads for latency (default: all cores)")
    latency: bool = Field(True, description="measure ORT latency of the baseline and final ONNX")
    warmup: int = Field(10, ge=0, le=10_000, description="runs discarded before timing")
    repeats: int = Field(
        200, ge=3, le=100_000, description="the most timed runs per model at batch 1 (fewer at large batches: "
                                   "~3 s cap; more, up to 2,000, for models so fast that 200 runs last under "
                                   "0.1 s); timing stops sooner once the speedup's interval is within "
                                   "latency_tolerance")
    # 0.02: the speedup known to +-2%, finer than the 3% margin of the faster/SLOWER verdict.
    latency_tolerance: float = Field(
        0.02, ge=0, le=0.5, description="stop timing a pair once the speedup's 95% interval lies within "
                                        "+-this fraction of it (after at least 0.1 s and 20 runs per model); "
                                        "0: always make the planned runs")
    # final: the input model's accuracy is measured once, on its parity-checked fp32 ONNX export
    # (torch's was the same number on every bench model: 0.9117, 0.9189, 0.8279), and the final model's.
    steps: Literal["final", "all"] = Field(
        "final", description="which accuracies are evaluated: final = the input model (as its fp32 ONNX "
                             "export) and the final model; all = also the input model in torch and every "
                             "step; parameters, MACs and sizes are recorded after every step either way")

    def timing_settings(self) -> dict[str, Any]:
        """What latency measurements depend on (for cache keys): everything but ``steps``."""
        return self.model_dump(mode="json", exclude={"steps"})


class PassStep(Section):
    """One validated entry of ``passes``."""

    name: str
    config: PassConfig

    def params(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


class DeployStep(Section):
    """One validated entry of ``deploy``."""

    target: str
    config: TargetConfig

    def params(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


class Recipe(Section):
    version: Literal[1] = Field(description="recipe format version")
    # The name is a directory name (runs/<name>), hence the length bound.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128, description="run name")
    # numpy's generators take seeds in 0 .. 2**32 - 1.
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds data subsets, training and calibration")
    model: ModelSpec
    data: DataSpec
    passes: list[PassStep] = Field(default_factory=list, description="ordered passes, each {name: {params}}")
    # After the passes: the final model fanned out to deployment targets, each measured in its runtime.
    deploy: list[DeployStep] = Field(default_factory=list,
                                     description="deploy targets, each {target: {precision: ..., ...}}")
    gates: Gates = Field(default_factory=Gates)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    # The written file is lean by default: the pipeline ends the run with an `optimize` step (its
    # defaults) unless the last pass is `optimize`, and measures the fp32 baseline ONNX optimized
    # the same way, so size ratios compare like with like.
    optimize: bool = Field(
        True, description="end with an `optimize` step (short names, no unused domains, constants folded) "
                          "unless the last pass is `optimize`; false: write the file as the last pass left it")
    output: PathText | None = Field(None, description="output directory (default runs/<name>)")
    cache_dir: PathText | None = Field(None, description="step cache (default <output>/.cache)")
    base_dir: Path = Field(Path("."), exclude=True)  # the recipe file's directory
    # The registry the passes were validated with; run_recipe uses it unless told otherwise.
    _registry: PassRegistry | None = PrivateAttr(None)
    _targets: TargetRegistry | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _per_task_keys_name_tasks(self) -> Recipe:
        """task_weights and per-task gates name tasks of model.tasks (checked without the model)."""
        problems = []
        if self.model.task_weights is not None:
            problems += task_key_problems(self.model.task_weights, self.model.tasks, ("model", "task_weights"))
        for name in ("max_accuracy_drop", "min_accuracy", "max_drop_vs_teacher"):
            value = getattr(self.gates, name)
            if isinstance(value, dict):
                problems += task_key_problems(value, self.model.tasks, ("gates", name))
        if problems:
            raise cross_field_error(type(self).__name__, problems)
        return self

    @model_validator(mode="after")
    def _gates_measurable(self) -> Recipe:
        if self.gates.min_speedup is not None and not self.evaluation.latency:
            raise cross_field_error(type(self).__name__, [(
                ("gates", "min_speedup"), "`gates.min_speedup` needs latency, but `evaluation.latency` is "
                "false, so the gate could never pass; remove the gate or set `evaluation.latency: true`",
                self.gates.min_speedup)])
        return self

    @property
    def registry(self) -> PassRegistry | None:
        """The pass registry this recipe was validated with (None: built directly)."""
        return self._registry

    @property
    def targets(self) -> TargetRegistry | None:
        """The target registry ``deploy`` was validated with (None: built directly)."""
        return self._targets

    def resolve(self, path: str | None) -> Path | None:
        """Resolve a path from the recipe against the recipe file's directory."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base_dir / p))

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.output or f"runs/{self.name}")  # type: ignore[return-value]

    def to_data(self) -> dict[str, Any]:
        """Plain data with defaults filled in (what `run` writes as recipe.resolved.yaml)."""
        data = self.model_dump(mode="json", exclude={"passes", "deploy", "base_dir"})
        data["passes"] = [{step.name: step.params()} for step in self.passes]
        if self.deploy:  # only when given: recipes without targets dump as before
            data["deploy"] = [{step.target: step.params()} for step in self.deploy]
        return data


# --------------------------------------------------------------------------- loading


def load_recipe(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    registry: PassRegistry | None = None,
    targets: TargetRegistry | None = None,
) -> Recipe:
    """Read, override and validate a recipe file; raise RecipeError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "recipe file not found", got=str(path), expected="a YAML file", fix="check the path"
        )
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)  # enough to see that a file is too large
    except OSError as exc:
        raise InputError("cannot read the recipe file", got=f"{path}: {exc.strerror or exc}",
                         fix="check the file's permissions") from exc
    return parse_recipe(raw, base_dir=path.parent, overrides=overrides,
                        registry=registry, targets=targets, filename=str(path))


def parse_recipe(
    text: str | bytes,
    *,
    base_dir: Path = Path("."),
    overrides: list[str] | tuple[str, ...] = (),
    registry: PassRegistry | None = None,
    targets: TargetRegistry | None = None,
    filename: str = "<recipe>",
) -> Recipe:
    """Validate recipe text (bytes must be UTF-8); raise RecipeError listing every problem."""
    try:
        doc = parse_yaml(text, filename=filename)
    except YamlInputError as exc:
        problems = [RecipeProblem(format_path(i.path), i.line, i.message) for i in exc.issues]
        raise RecipeError(problems, file=filename) from None
    problems = [RecipeProblem(format_path(p), line, "duplicate key (YAML keeps only the last)")
                for p, line in doc.duplicates]
    overridden = _apply_overrides(doc, overrides, problems)
    validator = _Validator(doc, overridden, registry or default_registry(), problems, targets)
    recipe = validator.validate(base_dir)
    if problems or recipe is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0, p.path))
        raise RecipeError(problems, file=filename)
    return recipe


def _apply_overrides(doc: YamlDocument, overrides, problems: list[RecipeProblem]) -> set[tuple]:
    """Apply ``a.b.0.c=value`` overrides in place; values parse as YAML scalars/lists."""
    touched: set[tuple] = set()
    for item in overrides:
        parts, value, error = _parse_override(item)
        if error is None:
            error = _set_path(doc, parts, value)
        if error:
            where = format_path(tuple(parts) if parts else (item,))
            problems.append(RecipeProblem(where, None, error, source="--set"))
        else:
            touched.add(tuple(parts))
    return touched


def _parse_override(item: str) -> tuple[list[str | int], Any, str | None]:
    """``KEY=VALUE`` -> (key parts, value, None), or ([...], None, why it is refused)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        return [], None, "expected KEY=VALUE, e.g. passes.0.export.opset=18"
    # ASCII digits only: "²".isdigit() is True but int("²") fails; 18 digits fit any list.
    parts: list[str | int] = [int(p) if p.isascii() and p.isdigit() and len(p) <= 18 else p
                              for p in key.split(".")]
    if any(p == "" for p in parts):
        return [], None, f"empty key segment in {clip_repr(key)}; write keys like passes.0.export.opset"
    try:
        value_doc = parse_yaml(raw)
    except YamlInputError as exc:
        if not exc.syntax:  # too deep, too large, ...: refused as in a file
            return parts, None, f"value refused: {exc.issues[0].message}"
        return parts, raw, None  # not YAML (say `[draft`): the text itself
    if len(parts) + value_doc.height > MAX_DEPTH:
        return parts, None, f"nested deeper than {MAX_DEPTH} levels"
    return parts, value_doc.data, None


def _set_path(doc: YamlDocument, parts: list[str | int], value: Any) -> str | None:
    if doc.data is None:
        doc.data = {}
    node: Any = doc.data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                shown = part if isinstance(part, int) else clip_repr(part)
                return f"no list index {shown} here (the list has {len(node)} entries)"
        elif isinstance(node, dict):
            if isinstance(part, int):
                part = str(part)
            if not last and part not in node:
                node[part] = {}
        else:
            return f"cannot set a key inside a {type(node).__name__}"
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node[part] is None:
                node[part] = {}
            # Copy on the way down: an alias shares its data with the anchor, and setting
            # `a.x` must not change `b` because the file says `b: *a`.
            if isinstance(node[part], (dict, list)):
                node[part] = type(node[part])(node[part])
            node = node[part]
    return None


class _Validator:
    """Turns raw YAML data into a Recipe, collecting problems instead of stopping."""

    def __init__(self, doc: YamlDocument, overridden: set[tuple], registry: PassRegistry,
                 problems: list[RecipeProblem], targets: TargetRegistry | None = None) -> None:
        self.doc, self.overridden, self.registry, self.problems = doc, overridden, registry, problems
        self._targets = targets  # discovered only when the recipe has `deploy:`

    def problem(self, path: tuple, message: str, suggestion: str | None = None) -> None:
        source = "--set" if any(path[: len(o)] == o for o in self.overridden) else "recipe"
        self.problems.append(RecipeProblem(format_path(path), self.doc.line_of(path), message,
                                           suggestion, source))

    def validate(self, base_dir: Path) -> Recipe | None:
        data = self.doc.data
        if not isinstance(data, dict):
            got = "an empty file" if data is None else f"a {type(data).__name__}"
            self.problem((), f"a recipe is a YAML mapping (version, name, model, data, passes, ...), "
                             f"got {got}")
            return None
        if "version" in data and data["version"] != RECIPE_VERSION:
            self.problem(("version",), f"unsupported recipe version {clip_repr(data['version'])}",
                         f"this modelzip reads version {RECIPE_VERSION}")
            return None
        if "base_dir" in data:  # a field the loader sets, not a recipe key
            self.problem(("base_dir",), "unknown key 'base_dir'",
                         "paths in a recipe are relative to the recipe file's directory")
            data = {k: v for k, v in data.items() if k != "base_dir"}
        model = data.get("model")
        source = model.get("source") if isinstance(model, dict) else None
        steps = self.validate_passes(data.get("passes"), "onnx" if onnx_file_of(source) is not None else "torch")
        targets = self.validate_deploy(data.get("deploy"))
        top = {k: v for k, v in data.items() if k not in ("passes", "deploy")}
        try:
            recipe = Recipe.model_validate({**top, "base_dir": base_dir})
        except ValidationError as exc:
            self.add_pydantic(exc, (), Recipe)
            return None
        if steps is None or targets is None:
            return None
        if not recipe.optimize and steps and steps[-1].name == "optimize":
            self.problem(("optimize",), "`optimize: false` turns off the final optimize step the pipeline "
                         "adds, but the last pass is `optimize`, which runs anyway",
                         "remove `optimize: false`, or remove the last pass to write the file unoptimized")
            return None
        if not self.check_pass_tasks(steps, recipe.model.tasks) or not self.check_teacher_gate(recipe, steps):
            return None
        recipe = recipe.model_copy(update={"passes": steps, "deploy": targets})
        recipe._registry = self.registry
        recipe._targets = self._targets
        return recipe

    def check_pass_tasks(self, steps: list[PassStep], tasks: tuple[str, ...] | None) -> bool:
        """Pass parameters keyed by task (PassConfig.task_keys) name tasks of ``model.tasks``."""
        ok = True
        for index, step in enumerate(steps):
            for keyed in step.config.task_keys():
                path = ("passes", index, step.name, *keyed.path)
                if tasks is None and keyed.every_task and len(keyed.keys) == 1:
                    continue  # one entry for a single-task model's one output, under any name
                found = task_key_problems(dict.fromkeys(keyed.keys), tasks, path)
                missing = [task for task in tasks or () if task not in keyed.keys]
                if keyed.every_task and missing:
                    found.append((path, f"`{'.'.join(keyed.path)}` has no entry for {', '.join(map(repr, missing))} "
                                        f"of model.tasks; give one per task ({', '.join(tasks)})", None))
                for where, message, _ in found:
                    self.problem(where, message)
                ok = ok and not found
        return ok

    def check_teacher_gate(self, recipe: Recipe, steps: list[PassStep]) -> bool:
        """``gates.max_drop_vs_teacher`` needs a pass that measures teachers (``merge``)."""
        if recipe.gates.max_drop_vs_teacher is None:
            return True
        if any(self.registry.get(step.name).compares_teachers for step in steps):
            return True
        self.problem(("gates", "max_drop_vs_teacher"), "`gates.max_drop_vs_teacher` compares each task with "
                     "the teacher a `merge` pass distilled it from, but no pass here has teachers",
                     "add a merge pass, or use max_accuracy_drop (against the input model)")
        return False

    def validate_passes(self, raw: Any, kind: ArtifactKind = "torch") -> list[PassStep] | None:
        """The passes, each checked alone and against the kind of model it receives (``kind``:
        the input model's)."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(("passes",), "expected a list of {pass_name: {params}} entries")
            return None
        steps: list[PassStep] = []
        input_kind = kind
        quantized_by: str | None = None  # e.g. "passes[2].quantize", once the model is quantized
        ok = True
        for index, entry in enumerate(raw):
            step = self.validate_step(index, entry)
            if step is None:
                ok = False
                continue
            pass_obj = self.registry.get(step.name)()
            consumes = pass_obj.consumes_for(step.config)
            if kind not in consumes:
                from_onnx_file = kind == input_kind == "onnx"
                self.problem(("passes", index, step.name),
                             f"{step.name!r}{_mode(step) if consumes != pass_obj.consumes else ''} takes "
                             f"{_kinds(consumes)} model, but the "
                             + ("input model is an ONNX file (model.source)" if from_onnx_file
                                else f"model is {kind} at this point"),
                             "name the torch factory and its checkpoint as model.source/model.checkpoint "
                             "(an ONNX file runs through ONNX passes only: quantize, optimize)"
                             if from_onnx_file else "reorder the passes (export turns torch into onnx)")
                ok = False
            elif pass_obj.quantizes and quantized_by is not None:
                self.problem(("passes", index, step.name),
                             f"the model is already quantized by {quantized_by}; quantizing quantized "
                             "weights again only loses accuracy",
                             f"keep one quantizing pass: remove this one or {quantized_by}")
                ok = False
            else:
                kind = pass_obj.output_kind(kind, step.config)
                if pass_obj.quantizes:
                    quantized_by = f"passes[{index}].{step.name}"
            steps.append(step)
        return steps if ok else None

    def validate_step(self, index: int, entry: Any) -> PassStep | None:
        path = ("passes", index)
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            self.problem(path, "each pass is a one-key mapping, e.g. `- export: {opset: 17}`")
            return None
        (name, params), = entry.items()
        if not isinstance(name, str) or name not in self.registry:
            hint = self.registry.suggest(str(name))
            self.problem(path + (str(name),), f"unknown pass {clip_repr(name)}",
                         (hint + " " if hint else "") + f"(available: {', '.join(self.registry.names())})")
            return None
        config_cls = self.registry.get(name).Config
        if params is None:
            params = {}
        if not isinstance(params, dict):
            self.problem(path + (name,), f"pass parameters must be a mapping, got {clip_repr(params)}")
            return None
        try:
            config = config_cls.model_validate(params)
        except ValidationError as exc:
            self.add_pydantic(exc, path + (name,), config_cls)
            return None
        return PassStep(name=name, config=config)

    @property
    def targets(self) -> TargetRegistry:
        if self._targets is None:
            self._targets = default_targets()
        return self._targets

    def validate_deploy(self, raw: Any) -> list[DeployStep] | None:
        """``deploy:`` entries: known targets, valid parameters, one entry per target (each writes
        deploy/<target>/), and the target's converter and runtime installed here."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(("deploy",), "expected a list of {target: {params}} entries, e.g. "
                                      "`- openvino: {precision: int8}`")
            return None
        steps: list[DeployStep] = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(raw):
            step = self.validate_target(index, entry)
            if step is None:
                continue
            if step.target in seen:
                self.problem(("deploy", index, step.target), f"{step.target!r} is already deploy[{seen[step.target]}]; "
                             f"each target writes deploy/{step.target}/, so it appears once",
                             "keep one entry per target")
                continue
            seen[step.target] = index
            steps.append(step)
        return steps if len(steps) == len(raw) else None

    def validate_target(self, index: int, entry: Any) -> DeployStep | None:
        path = ("deploy", index)
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            self.problem(path, "each target is a one-key mapping, e.g. `- mnn: {precision: fp16}`")
            return None
        (name, params), = entry.items()
        if not isinstance(name, str) or name not in self.targets:
            hint = self.targets.suggest(str(name))
            self.problem(path + (str(name),), f"unknown deploy target {clip_repr(name)}",
                         (hint + " " if hint else "") + f"(available: {', '.join(self.targets.names())})")
            return None
        target_cls = self.targets.get(name)
        params = {} if params is None else params
        if not isinstance(params, dict):
            self.problem(path + (name,), f"target parameters must be a mapping, got {clip_repr(params)}")
            return None
        try:
            config = target_cls.Config.model_validate(params)
        except ValidationError as exc:
            self.add_pydantic(exc, path + (name,), target_cls.Config)
            return None
        missing = target_cls().missing(config)
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            self.problem(path + (name,), f"{name} needs {', '.join(missing)}, which {verb} not installed here",
                         f"install it with `{target_cls.install}`")
            return None
        return DeployStep(target=name, config=config)

    def add_pydantic(self, exc: ValidationError, prefix: tuple, model: type[BaseModel]) -> None:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if loc and loc[0] == "base_dir":
                continue
            path = prefix + loc
            if err["type"] == "extra_forbidden":
                valid = _fields_at(model, loc[:-1])
                hint = suggest(str(loc[-1]), valid)
                self.problem(path, f"unknown key {clip_repr(loc[-1])}",
                             (hint + " " if hint else "") + f"(valid keys: {', '.join(valid)})")
            elif err["type"] == "missing":
                self.problem(path, "missing required key")
            elif err["type"] == CROSS_FIELD:  # the message is complete: says what and how to fix
                self.problem(path, err["msg"])
            else:
                message = err["msg"]
                message = message[0].lower() + message[1:]
                if message.startswith("value error, "):
                    message = message[len("value error, "):]
                self.problem(path, f"{message}, got {clip_repr(err['input'])}")


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model found by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [n for n in current.model_fields if n != "base_dir"]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` style annotations, else the annotation."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def recipe_json_schema(registry: PassRegistry | None = None) -> dict[str, Any]:
    """JSON Schema of recipe files, with each registered pass's parameters."""
    registry = registry or default_registry()
    schema = Recipe.model_json_schema(mode="validation")
    schema["properties"].pop("base_dir", None)
    one_of = []
    for name in registry.names():
        config_schema = registry.get(name).Config.model_json_schema()
        one_of.append({
            "type": "object",
            "properties": {name: {"anyOf": [config_schema, {"type": "null"}]}},
            "required": [name],
            "additionalProperties": False,
        })
    schema["properties"]["passes"] = {"type": "array", "items": {"oneOf": one_of},
                                      "description": "ordered passes, each {name: {params}}"}
    targets = default_targets()
    schema["properties"]["deploy"] = {"type": "array", "description": "deploy targets, each {target: {params}}",
                                      "items": {"oneOf": [_one_key(name, targets.get(name).Config)
                                                          for name in targets.names()]}}
    schema.get("$defs", {}).pop("DeployStep", None)
    schema.get("$defs", {}).pop("TargetConfig", None)
    schema.get("$defs", {}).pop("PassStep", None)
    schema.get("$defs", {}).pop("PassConfig", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelzip recipe"
    return schema


def _one_key(name: str, config: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema of a one-key entry ``{name: {params}}`` (a pass or a target)."""
    return {"type": "object", "properties": {name: {"anyOf": [config.model_json_schema(), {"type": "null"}]}},
            "required": [name], "additionalProperties": False}


def _mode(step: PassStep) -> str:
    """" (mode qat)": the parameter that narrowed what the step takes (Pass.consumes_for)."""
    mode = getattr(step.config, "mode", None)
    return f" (mode {mode})" if isinstance(mode, str) else ""


def _kinds(kinds: tuple[str, ...]) -> str:
    """("onnx",) -> "an onnx"; ("torch", "onnx") -> "a torch or onnx"."""
    return ("an " if kinds[0][0] in "aeiou" else "a ") + " or ".join(kinds)
