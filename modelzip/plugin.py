"""What a pass plugin implements: a config model and a ``run`` method.

Kept free of torch so that ``modelzip validate``/``passes``/``explain`` can load
every plugin's config without paying for heavy imports; a pass imports torch,
onnx or onnxruntime inside ``run``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

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


class PassConfig(BaseModel):
    """Base of every pass's parameters: frozen, unknown keys are errors, floats are finite
    (`.inf` or `.nan` would switch a check off or poison training)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    # True: the pass quantizes the model; `validate` refuses a second quantizing pass after it.
    quantizes: ClassVar[bool] = False
    # What the step reads besides its input artifact and params, so its cache key can cover it
    # (a cached result is never silently stale): "data" = the train/validation/calibration splits
    # (spec and file digests); "timing" = the CPU and evaluation settings (a pass that chooses by
    # measured latency). Files named by parameters are declared by `input_files`.
    reads: ClassVar[frozenset[str]] = frozenset({"data"})

    def input_files(self, config: PassConfig) -> list[str]:
        """Paths, as written in the recipe, of files this pass opens (e.g. a teacher checkpoint);
        their content digests join the step's cache key."""
        return []

    def output_kind(self, input_kind: ArtifactKind, config: PassConfig) -> ArtifactKind:
        """Kind of artifact this pass returns for ``input_kind`` (used by `validate`)."""
        return self.produces or input_kind

    def run(self, artifact: Artifact, config: PassConfig, ctx: PassContext) -> Artifact:
        raise NotImplementedError
