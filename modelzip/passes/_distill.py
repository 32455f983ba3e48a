"""Knowledge-distillation parameters, shared by the finetune and quantize (qat) passes.

Light (no torch): both pass modules import it at module level.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from modelzip.plugin import PassConfig, PathText
from modelzip.registry import suggest

TEACHERS = ("baseline", "input")


class DistillConfig(PassConfig):
    teacher: PathText = Field(
        "baseline", min_length=1,
        description='"baseline": the model as it entered the pipeline; "input": the model as it '
                    "entered this pass; or a state_dict file of the recipe's model architecture "
                    "(relative paths start at the recipe's directory)")
    alpha: float = Field(
        0.5, ge=0, le=1,
        description="weight of the distillation term, alpha·T²·KL(teacher‖student); "
                    "(1 - alpha) weighs cross-entropy on the labels")
    temperature: float = Field(
        4.0, gt=0, le=100, description="T: softens both distributions (1 = plain softmax)")

    @field_validator("teacher")
    @classmethod
    def _teacher_form(cls, value: str) -> str:
        # Anything path-like is a checkpoint; a bare word must be one of the keywords.
        if value in TEACHERS or "/" in value or "." in value:
            return value
        hint = suggest(value, list(TEACHERS))
        raise ValueError(f"unknown teacher {value!r}" + (f"; {hint}" if hint else "")
                         + ' (expected "baseline", "input" or a path to a .pt state_dict)')


def teacher_files(distill: DistillConfig | None) -> list[str]:
    """The teacher checkpoint a distillation reads, if it is a file (for the cache key)."""
    if distill is None or distill.teacher in TEACHERS:
        return []
    return [distill.teacher]
