"""Conversions run in a process of their own, offline (modelzip.offline): a converter that
crashes, prints from C++, phones home or tries to install a package does so there, refused.

``convert_offline`` starts ``python -m modelzip.deploy.worker REQUEST.json``; the worker loads
the target class by its import path (so a target registered in-process by a test converts too),
converts inside ``offline()``, and writes RESULT.json: the files and details, or the error, and
every network connection or installer it refused.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from modelzip.errors import TargetError

REQUEST, RESULT = "request.json", "result.json"


def convert_offline(target_cls: type, params: dict[str, Any], onnx: Path, input_shape: tuple[int, ...],
                    calibration: Path | None, out_dir: Path, scratch: Path, *, program: Path | None = None,
                    batches: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Convert in a worker process; returns RESULT.json ({"files", "details", "blocked",
    "wall_time_s"}); raises TargetError for a conversion the target refused or a worker that died."""
    request = {"target": f"{target_cls.__module__}:{target_cls.__qualname__}", "params": params,
               "onnx": str(Path(onnx).resolve()), "input_shape": list(input_shape), "out": str(Path(out_dir).resolve()),
               "calibration": None if calibration is None else str(Path(calibration).resolve()),
               "program": None if program is None else str(Path(program).resolve()), "batches": list(batches)}
    (scratch / REQUEST).write_text(json.dumps(request))
    (scratch / RESULT).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_root(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "modelzip.deploy.worker", str(scratch)], capture_output=True,
                          text=True, env=env, cwd=scratch)
    result_path = scratch / RESULT
    if not result_path.is_file():
        tail = (done.stdout + done.stderr).strip()[-1500:]
        raise TargetError(f"the conversion process died (exit {done.returncode}) before it reported", got=tail,
                          fix="run the conversion again; if it repeats, leave this target out of `deploy:`")
    result = json.loads(result_path.read_text())
    if "error" in result:
        error = result["error"]
        raise TargetError(error["what"], nodes=tuple(tuple(n) for n in error.get("nodes", ())),
                          got=error.get("got"), fix=error.get("fix"))
    return result


def _root() -> str:
    """The directory holding the modelzip package (the worker imports this same copy)."""
    return str(Path(__file__).resolve().parents[2])


def main(scratch: Path) -> None:
    from modelzip.offline import offline
    from modelzip.target import ConvertInput

    request = json.loads((scratch / REQUEST).read_text())
    module, _, name = request["target"].partition(":")
    result: dict[str, Any] = {}
    started = time.perf_counter()
    with offline() as blocked:
        try:
            target_cls = getattr(importlib.import_module(module), name)
            config = target_cls.Config.model_validate(request["params"])
            source = ConvertInput(Path(request["onnx"]), tuple(request["input_shape"]),
                                  None if request["calibration"] is None else Path(request["calibration"]),
                                  None if request["program"] is None else Path(request["program"]),
                                  tuple(request["batches"]))
            converted = target_cls().convert(source, config, Path(request["out"]))
            result = {"files": list(converted.files), "details": converted.details}
        except TargetError as exc:
            result = {"error": {"what": exc.what, "nodes": [list(n) for n in exc.nodes], "got": exc.got,
                                "fix": exc.fix}}
        except Exception as exc:  # a converter's own exception: reported, never a traceback
            result = {"error": {"what": f"the converter failed ({type(exc).__name__}: {str(exc)[:1500]})",
                                "fix": "leave this target out of `deploy:`, or report the model to the converter"}}
    result["blocked"] = list(blocked)
    result["wall_time_s"] = round(time.perf_counter() - started, 3)
    (scratch / RESULT).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
