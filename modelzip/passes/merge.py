"""merge: N single-task teachers -> one multi-task student, by multi-teacher distillation.

The recipe's model is the student (a shared backbone with one head per task of ``model.tasks``,
trained or not); ``teachers`` names one single-task model per task, each its own architecture and
checkpoint. Every head of the student learns from its task's teacher (alpha·T²·KL) and from the
labels ((1 - alpha)·CE), over the training split, which carries every task's label. The step's
report compares the student with the sum of the teachers: parameters, MACs, ONNX bytes, latency
(the student against all teachers run one after the other), and each task's eval accuracy
against its teacher's.

Light imports only: the run lives in modelzip.passes._merge_run (torch).
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from modelzip.passes.finetune import TrainingConfig
from modelzip.plugin import Pass, PassConfig, PathText, TaskKeys
from modelzip.recipe import MAX_DIM, check_source


class TeacherSpec(PassConfig):
    """One single-task teacher: built like ``model`` (source, args, in_channels) from its own
    checkpoint, on the recipe's input shape."""

    source: str = Field(description='"torchvision:<name>", "<module>:<callable>" or "modelzip.zoo:<name>"')
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    checkpoint: PathText = Field(
        min_length=1, description="its state_dict file, loaded with weights_only=True (relative paths "
                                  "start at the recipe's directory)")
    in_channels: int | None = Field(
        None, ge=1, le=MAX_DIM, description="adapt the first convolution to this many input channels")

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        return check_source(value)


class MergeConfig(TrainingConfig):
    teachers: dict[str, TeacherSpec] = Field(
        min_length=1, description="one single-task teacher per task of model.tasks: {task: {source, args, "
                                  "checkpoint, in_channels}}; each head of the student distills from its "
                                  "task's teacher")
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of the distillation term, alpha·T²·KL(teacher‖student) per head; "
                                     "(1 - alpha) weighs cross-entropy on the labels")
    temperature: float = Field(4.0, gt=0, le=100, description="T: softens both distributions (1 = plain softmax)")

    def task_keys(self) -> list[TaskKeys]:
        return [TaskKeys(("teachers",), tuple(self.teachers), every_task=True)]


class MergePass(Pass):
    name = "merge"
    summary = "Merge single-task teachers into the multi-task student by distillation; compare it with their sum"
    Config = MergeConfig
    consumes = ("torch",)
    # "timing": the step times the student against the teachers run one after the other.
    reads = frozenset({"data", "timing"})
    compares_teachers = True

    def input_files(self, config: MergeConfig) -> list[str]:
        return [teacher.checkpoint for teacher in config.teachers.values()]

    def run(self, artifact, config: MergeConfig, ctx):
        from modelzip.passes._merge_run import run_merge

        return run_merge(artifact, config, ctx, pass_name=self.name)
