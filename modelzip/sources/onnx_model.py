"""An ONNX input model ("onnx:<file>" model.source) seen as a torch module, for the preflight.

The preflight's checks (input shape, output width, NaN outputs, one output per task) are
written against a module's forward; running the file in onnxruntime behind the same call
lets them apply to an ONNX input unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class OnnxModule(nn.Module):
    """Runs ``path`` in onnxruntime: one output is a tensor, several a dict by output name."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [output.name for output in self._session.get_outputs()]

    def forward(self, images: torch.Tensor):
        arrays = self._session.run(None, {self._input: images.detach().cpu().numpy().astype(np.float32)})
        tensors = [torch.from_numpy(np.asarray(array)) for array in arrays]
        return tensors[0] if len(tensors) == 1 else dict(zip(self._outputs, tensors))
