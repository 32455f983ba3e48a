"""What a pass plugin implements: a config model and a ``run`` method.

Kept free of torch so that ``modelzip validate``/``passes``/``explain`` can load
every plugin's config without paying for heavy imports; a pass imports torch,
onnx or onnxruntime inside ``run``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover - typing only
    from modelzip.artifacts import Artifact
    from modelzip.context import PassContext

ArtifactKind = Literal["torch", "onnx"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("torch", "onnx")


class PassConfig(BaseModel):
    """Base of every pass's parameters: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
