"""What a pass plugin implements: a config model and a ``run`` method.

Kept free of torch so that ``modelzip validate``/``passes``/``explain`` can load
every plugin's config without paying for heavy imports; a pass imports torch,
onnx or onnxruntime inside ``run``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from modelzip.artifacts import Artifact
    from modelzip.context import PassContext

ArtifactKind = Literal["torch", "onnx"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("torch", "onnx")


MAX_PATH_CHARS = 4096  # Linux PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX: one component of a path, in bytes


def _path_text(value: str) -> str:
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    if len(value) > MAX_PATH_CHARS:
        raise ValueError(f"a path is at most {MAX_PATH_CHARS} characters, this one has {len(value):,}")
    for part in value.replace("\\", "/").split("/"):
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise ValueError(f"each file or directory name in a path is at most {MAX_NAME_BYTES} "
                             f"bytes, one here has {size:,}")
    return value


# A file or directory named in a recipe: bounded as the OS bounds it, so a mistake is
# reported by `validate` instead of failing with ENAMETOOLONG in the middle of a run.
PathText = Annotated[str, AfterValidator(_path_text)]


# The pydantic error type of a cross-field mistake (a parameter that does not apply, two
# settings that contradict each other): its message is complete, no "got <value>" is added.
CROSS_FIELD = "cross_field"


def cross_field_error(title: str, problems: list[tuple[tuple[str | int, ...], str, Any]]) -> ValidationError:
    """A ValidationError with one entry per (location, message, input): how a model validator
    reports cross-field mistakes at the key they concern (so `validate` prints its line)."""
    return ValidationError.from_exception_data(title, [_cross_field(*p) for p in problems])


def _cross_field(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(CROSS_FIELD, message), loc=loc, input=value)


class TaskKeys(NamedTuple):
    """A parameter keyed by task name: its path inside the pass's parameters, its keys, and whether
    every task of ``model.tasks`` needs a key (a merge's teachers) or any subset may appear."""

    path: tuple[str, ...]
    keys: tuple[str, ...]
    every_task: bool = False


class PassConfig(BaseModel):
    """Base of every pass's parameters: frozen, unknown keys are errors, floats are finite
    (`.inf` or `.nan` would switch a check off or poison training).

    ``applies_to`` says which parameters belong to which choice, e.g.
    ``{"sparsity": {"method": ("magnitude",)}}``: `sparsity` means something only when
    `method` is magnitude (``GIVEN`` instead of a tuple: only when that key is not null).
    One rule: a parameter written in the recipe (pydantic's ``model_fields_set``) under a
    choice it does not apply to is an error, whatever its value.
    Dumps leave such parameters out, so a dumped config (recipe.resolved.yaml) loads back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    applies_to: ClassVar[Mapping[str, Mapping[str, tuple[Any, ...]]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for param, conditions in cls.applies_to.items():
            unknown = [n for n in (param, *conditions) if n not in cls.model_fields]
            if unknown:
                raise TypeError(f"{cls.__name__}.applies_to names {unknown}, which are not fields")

    def task_keys(self) -> list[TaskKeys]:
        """The parameters keyed by task name (none by default), so that `validate` checks their keys
        against ``model.tasks`` with a did-you-mean, without loading the model."""
        return []

    def not_applicable(self) -> dict[str, dict[str, Any]]:
        """{parameter: {selector: chosen value}} for each parameter the choices made exclude."""
        return _not_applicable(type(self), lambda key: getattr(self, key))

    @model_validator(mode="wrap")
    @classmethod
    def _check_applies_to(cls, data: Any, handler: Any) -> Any:
        if not cls.applies_to or not isinstance(data, Mapping):
            return handler(data)
        try:
            config, failure, errors = handler(data), None, []
        except ValidationError as exc:
            config, failure, errors = None, exc, exc.errors()
        failed = {e["loc"][0] for e in errors if e["loc"]}

        def chosen(key: str) -> Any:
            if config is not None:
                return getattr(config, key)
            if key in failed:  # reported already; say nothing that depends on it
                raise LookupError(key)
            if key not in data:
                return cls.model_fields[key].get_default(call_default_factory=True)
            return TypeAdapter(cls.model_fields[key].annotation).validate_python(data[key])

        written = config.model_fields_set if config is not None else set(data)
        wrong = {k: v for k, v in _not_applicable(cls, chosen).items() if k in written}
        if not wrong:
            if failure is not None:
                raise failure
            return config
        kept = [e for e in errors if not (e["loc"] and e["loc"][0] in wrong)]  # "remove it" covers them
        raise ValidationError.from_exception_data(cls.__name__, _again(kept) + [
            _cross_field((name,), _not_applicable_message(cls, name, got), data.get(name))
            for name, got in wrong.items()])

    @model_serializer(mode="wrap")
    def _dump_applicable(self, handler: SerializerFunctionWrapHandler) -> Any:
        dumped = handler(self)
        if isinstance(dumped, dict):
            for name in self.not_applicable():
                dumped.pop(name, None)
        return dumped


def _not_applicable(cls: type[PassConfig], chosen: Any) -> dict[str, dict[str, Any]]:
    wrong: dict[str, dict[str, Any]] = {}
    for param, conditions in cls.applies_to.items():
        try:
            values = {key: chosen(key) for key in conditions}
        except (LookupError, ValidationError):
            continue
        off = {key: value for key, value in values.items() if value not in conditions[key]}
        if off:
            wrong[param] = off
    return wrong


class _Given(tuple):
    """An ``applies_to`` condition met by any value but null: "only when `key` is given"."""

    def __contains__(self, value: object) -> bool:
        return value is not None


GIVEN = _Given()


def _choice(key: str, values: tuple[Any, ...]) -> str:
    if isinstance(values, _Given):
        return f"{key} set"
    return f"{key}: {' or '.join(map(str, values))}"


def _not_applicable_message(cls: type[PassConfig], param: str, got: dict[str, Any]) -> str:
    conditions = cls.applies_to[param]
    needed = " and ".join(_choice(k, v) for k, v in conditions.items())
    chosen = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in got.items())
    fix = " and ".join(f"set {k}" if isinstance(conditions[k], _Given) else f"choose {_choice(k, conditions[k])}"
                       for k in got)
    return f"`{param}` applies only to {needed}, not {chosen}; remove it or {fix}"


def _again(errors: list[Any]) -> list[InitErrorDetails]:
    """Errors from ``ValidationError.errors()`` in the form that raises them again."""
    return [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=e["input"])
            for e in errors]


class Pass:
    """Base class of a pass plugin.

    A pass maps (artifact, config, context) to a new artifact. It never writes
    the report, touches the cache or decides exit codes: the pipeline does.
    Register it under the entry-point group ``modelzip.passes`` with the same
    name as ``Pass.name``.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown by `modelzip passes`
    Config: ClassVar[type[PassConfig]]
    # Bump when a change in `run` should invalidate cached results.
    version: ClassVar[str] = "1"
    consumes: ClassVar[tuple[ArtifactKind, ...]] = ("torch",)
    produces: ClassVar[ArtifactKind | None] = None  # None: the kind it consumed
    # True: under torchrun every process runs this pass (data-parallel training); False:
    # rank 0 runs it alone while the other processes wait.
    distributed: ClassVar[bool] = False
    # True: the pass records its teachers' accuracy per task (details "merge" -> "accuracy"), which
    # `gates.max_drop_vs_teacher` compares the final model with.
    compares_teachers: ClassVar[bool] = False
    # True: the pass quantizes the model; `validate` refuses a second quantizing pass after it.
    quantizes: ClassVar[bool] = False
    # What the step reads besides its input artifact and params, so its cache key can cover it
    # (a cached result is never silently stale): "data" = the train/validation/calibration splits
    # (spec and file digests); "timing" = the CPU and evaluation settings (a pass that chooses by
    # measured latency); "cpu" = the CPU's model and instruction-set flags (a pass whose result
    # follows them, such as round_to: auto). Files named by parameters are declared by `input_files`.
    reads: ClassVar[frozenset[str]] = frozenset({"data"})

    def reads_for(self, config: PassConfig) -> frozenset[str]:
        """What a step with ``config`` reads (a subset of ``reads``): override when a parameter
        decides it, e.g. data only when a data-driven option is on."""
        return self.reads

    def consumes_for(self, config: PassConfig) -> tuple[ArtifactKind, ...]:
        """Kinds of model a step with ``config`` takes (a subset of ``consumes``; `validate` checks
        it): override when a parameter decides it, e.g. a mode that trains the torch model."""
        return self.consumes

    def input_files(self, config: PassConfig) -> list[str]:
        """Paths, as written in the recipe, of files this pass opens (e.g. a teacher checkpoint);
        their content digests join the step's cache key."""
        return []

    def output_kind(self, input_kind: ArtifactKind, config: PassConfig) -> ArtifactKind:
        """Kind of artifact this pass returns for ``input_kind`` (used by `validate`)."""
        return self.produces or input_kind

    def run(self, artifact: Artifact, config: PassConfig, ctx: PassContext) -> Artifact:
        raise NotImplementedError
