"""The contract every pass keeps, as one function a plugin's own tests can call."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from modelzip.artifacts import Artifact
    from modelzip.plugin import ArtifactKind, Pass, PassConfig


def check_pass_contract(pass_cls: type[Pass], config: PassConfig | None = None,
                        artifact_kind: ArtifactKind = "torch", *, work_dir: str | Path | None = None) -> Artifact:
    """Run ``pass_cls`` once on :func:`~modelzip.testing.tiny_artifact` and check what every pass
    promises; raise AssertionError saying which promise broke. Returns the produced artifact.

    - the class registers (name, Config, summary, consumes/produces, run: as a registry checks);
    - ``Config()`` validates (give ``config`` for a pass with required parameters);
    - ``modelzip explain`` renders the parameters;
    - ``input_files``, ``reads`` and ``reads_for`` are well-formed;
    - the input artifact is not mutated (tensors, or the ONNX file's bytes);
    - the result has the kind ``output_kind`` declares, and loads: a torch module runs forward;
      an ONNX file passes onnx.checker and runs in onnxruntime.
    """
    from modelzip.registry import verify_pass
    from modelzip.schema_text import describe_fields
    from modelzip.testing.fixtures import make_context, tiny_artifact

    verify_pass(pass_cls, getattr(pass_cls, "name", "?"), "check_pass_contract")
    if config is None:
        try:
            config = pass_cls.Config()
        except Exception as exc:  # pydantic's ValidationError: required parameters
            raise AssertionError(f"{pass_cls.name}: Config() does not validate ({exc}); pass "
                                 "check_pass_contract(..., config=Config(...))") from exc
    assert isinstance(config, pass_cls.Config), f"config is a {type(config).__name__}, not {pass_cls.Config}"
    rows = describe_fields(pass_cls.Config)
    assert [name for name, _ in rows] == list(pass_cls.Config.model_fields), "explain misses parameters"
    pass_obj = pass_cls()
    files = pass_obj.input_files(config)
    assert isinstance(files, list) and all(isinstance(f, str) for f in files), \
        f"input_files must return a list of str, got {files!r}"
    assert isinstance(pass_cls.reads, frozenset) and pass_cls.reads <= {"data", "timing", "cpu"}, \
        f"reads must be a frozenset of 'data'/'timing'/'cpu', got {pass_cls.reads!r}"
    reads = pass_obj.reads_for(config)
    assert isinstance(reads, frozenset) and reads <= pass_cls.reads, \
        f"reads_for must return a frozenset within reads ({set(pass_cls.reads)}), got {reads!r}"
    assert artifact_kind in pass_cls.consumes, f"{pass_cls.name} does not take {artifact_kind} models"

    ctx = make_context(pass_cls.name, work_dir=work_dir)
    artifact = tiny_artifact(artifact_kind, work_dir=ctx.work_dir / "input")
    before = _fingerprint(artifact)
    produced = pass_obj.run(artifact, config, ctx)
    assert _same(_fingerprint(artifact), before), f"{pass_cls.name} mutated its input artifact"

    expected = pass_obj.output_kind(artifact_kind, config)
    assert produced.kind == expected, f"{pass_cls.name} produced {produced.kind}, output_kind says {expected}"
    _check_loads(produced)
    return produced


def _fingerprint(artifact: Artifact) -> Any:
    if artifact.kind == "onnx":
        return hashlib.sha256(Path(artifact.path).read_bytes()).hexdigest()
    return {name: tensor.detach().clone() for name, tensor in artifact.module.state_dict().items()}, \
        [type(m).__name__ for m in artifact.module.modules()]


def _same(a: Any, b: Any) -> bool:
    return a == b if isinstance(a, str) else _tensors_equal(a, b)


def _tensors_equal(a: Any, b: Any) -> bool:
    import torch

    (sa, ma), (sb, mb) = a, b
    return ma == mb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _check_loads(artifact: Artifact) -> None:
    import numpy as np

    if artifact.kind == "torch":
        import torch

        with torch.no_grad():
            out = artifact.module.eval()(torch.zeros((2, *artifact.input_shape[1:])))
        assert out.shape[0] == 2, f"forward gave shape {tuple(out.shape)}"
        return
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(artifact.path), full_check=True)
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros(artifact.input_shape, dtype=np.float32)}
    outputs = session.run(None, feed)
    assert outputs and outputs[0].shape[0] == artifact.input_shape[0], "onnxruntime gave no batch"
