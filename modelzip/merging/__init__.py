"""Merging single-task models into one multi-task student (the ``merge`` pass's machinery).

Plain settings in, plain results out: the teachers arrive as modules, the student is trained by
modelzip.finetuning's loop on a distillation objective whose teacher is a :class:`TeacherEnsemble`,
and :mod:`.compare` measures the student against the teachers' sum. Never sees the context.
"""
from __future__ import annotations

from modelzip.merging.ensemble import TeacherEnsemble, TeacherOutputMismatch, check_teachers

__all__ = ["TeacherEnsemble", "TeacherOutputMismatch", "check_teachers"]
