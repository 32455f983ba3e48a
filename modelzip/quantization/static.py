"""Static (post-training) quantization: calibrated activation ranges, QDQ int8 graph.

Calibration is done once, batch by batch: onnxruntime's calibrators keep every collected
activation of a `collect_data` call in memory (histogram methods keep full tensors), so
feeding them one batch per call bounds memory by one batch whatever the sample count
(onnxruntime#10503). The ranges are saved in ORT's calibration-cache format and reused by
every quantization of the accuracy search, which then costs no further calibration.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxruntime.quantization import CalibrationDataReader

from modelzip.quantization.prepare import quiet

CALIBRATION_FILE = "calibration.json"
# What a QDQ model needs from an onnxruntime session, written into its metadata_props. Checked with
# onnxruntime 1.32 on the zoo CNN: ORT_ENABLE_BASIC leaves 16 DequantizeLinear feeding float Conv/Gemm,
# ORT_ENABLE_EXTENDED fuses them into QLinearConv/QGemm, ORT_ENABLE_ALL (the default) also runs the
# int8 convolutions and pools in NHWC (Transposes only at the edges). Nothing else is needed.
SESSION_METADATA = {
    "modelzip.onnxruntime.graph_optimization_level": "ORT_ENABLE_ALL",
    "modelzip.onnxruntime.note": "QDQ int8: onnxruntime fuses the QuantizeLinear/DequantizeLinear pairs into "
                                 "integer kernels at ORT_ENABLE_EXTENDED or above and runs int8 convolutions "
                                 "in NHWC at ORT_ENABLE_ALL (its default); below EXTENDED it computes in float",
}


@dataclass(frozen=True)
class StaticSettings:
    method: str  # minmax | entropy | percentile
    percentile: float
    symmetric_activations: bool  # int8 centred on 0; else uint8 with a zero point
    per_channel: bool
    reduce_range: bool

    def describe(self) -> dict[str, Any]:
        return {
            "format": "QDQ",
            "activations": "int8 symmetric" if self.symmetric_activations else "uint8 asymmetric",
            "weights": "int8 symmetric" + (" per-channel" if self.per_channel else " per-tensor")
                       + (" 7-bit (reduce_range)" if self.reduce_range else ""),
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
        }


class _OneBatch(CalibrationDataReader):
    """A reader over a single batch: the stream is fed to the calibrator one batch per
    `collect_data` call (see the module docstring)."""

    def __init__(self, input_name: str, images) -> None:
        self.feed = {input_name: images}

    def get_next(self):
        feed, self.feed = self.feed, None
        return feed


def calibrate(model_path: Path, batches: Iterable, input_name: str, settings: StaticSettings,
              cache_path: Path, scratch: Path) -> int:
    """Write activation ranges measured on ``batches`` of (images, labels) to ``cache_path``
    (ORT's calibration-cache JSON); return the number of samples used."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    method = _ort_method(settings.method)
    options: dict[str, Any] = {"symmetric": settings.symmetric_activations}
    if settings.method == "percentile":
        # Histograms of absolute values, as ORT does by default for this method.
        options = {"percentile": settings.percentile, "symmetric": True}
    samples = 0
    with quiet():
        calibrator = create_calibrator(model_path, None, augmented_model_path=str(scratch / "augmented.onnx"),
                                       calibrate_method=method, extra_options=options)
        for images, _labels in batches:
            calibrator.collect_data(_OneBatch(input_name, images.detach().cpu().numpy()))
            samples += len(images)
        if samples == 0:
            raise ValueError("the calibration set is empty")
        ranges = calibrator.compute_data()
    del calibrator  # holds an inference session on the augmented model
    save_tensors_data(ranges, cache_path)
    return samples


def quantize(model_path: Path, out_path: Path, calibration: Path, settings: StaticSettings,
             float_nodes: Iterable[str]) -> Path:
    """QDQ int8 model of ``model_path`` with ``float_nodes`` left in float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with quiet():
        quantize_static(
            str(model_path), str(out_path), calibration_data_reader=None,
            calibration_cache_path=str(calibration), calibrate_method=_ort_method(settings.method),
            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QInt8 if settings.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(float_nodes),
            extra_options={"ActivationSymmetric": settings.symmetric_activations,
                           "WeightSymmetric": True},
        )
    return out_path


def mark_session_needs(path: Path) -> None:
    """Write SESSION_METADATA into the model's metadata_props (replacing earlier values)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in SESSION_METADATA]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in SESSION_METADATA.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def calibration_batches(data, samples: int, batch_size: int, seed: int) -> Iterator:
    """The seeded calibration subset, streamed in batches (never held whole)."""
    subset = data.calibration(samples, seed=seed)
    return data.loader(subset, batch_size)


def _ort_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]
