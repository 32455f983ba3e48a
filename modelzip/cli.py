"""The `modelzip` command. It parses, prints and maps errors to exit codes; no logic.

Heavy modules (torch, onnxruntime) are imported only inside `run`.
"""
from __future__ import annotations

import json
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modelzip.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUN_FAILED,
    EXIT_TERMINATED,
    DeployFailure,
    GateFailure,
    ModelzipError,
    RegressionFailure,
    Terminated,
    input_error_from_os,
)

app = typer.Typer(
    name="modelzip", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Compress PyTorch models with a YAML recipe: prune, finetune, quantize, export to ONNX, report.",
)
_state = {"debug": False}
# `modelzip compare --help` (the keys live in modelzip.compare, which stays importable without torch).
_FAIL_ON_KEYS = ("accuracy_drop (<=: baseline accuracy - run accuracy), size_ratio and zip_ratio (>=: "
                 "baseline bytes / run bytes), speedup_ratio (>=: baseline ms / run ms at data.batch_size)")

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a recipe key, e.g. --set passes.0.export.opset=18 (repeatable)")]


def _version(value: bool) -> None:
    if value:
        from modelzip import __version__

        typer.echo(f"modelzip {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    _state["debug"] = debug


def _out_console():
    """stdout console; outside a terminal (CI logs, pipes) tables get 160 columns, not 80."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 160
    return console


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(exc: BaseException) -> typer.Exit:
    """Print one clear message (a traceback only with --debug) and pick the exit code.

    Never raises: if printing fails (an odd character, a closed terminal), the message
    goes to stderr as plain text and the exit code is still the error's own.
    """
    exc = input_error_from_os(exc) or exc  # a full disk, an unwritable --out: the user's to fix, exit 2
    if isinstance(exc, KeyboardInterrupt):
        code = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    else:
        code = exc.exit_code if isinstance(exc, ModelzipError) else EXIT_RUN_FAILED
    try:
        _print_failure(exc)
    except BaseException:
        try:
            text = exc.format() if isinstance(exc, ModelzipError) else f"{type(exc).__name__}: {exc}"
        except BaseException:
            text = type(exc).__name__
        try:
            encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
            sys.stderr.write(f"error: {text}\n".encode(encoding, "backslashreplace").decode(encoding))
        except BaseException:
            pass
    return typer.Exit(code)


def _print_failure(exc: BaseException) -> None:
    from rich.text import Text

    # User text (recipe values, paths, names) is never read as rich markup: Text is literal.
    console = _err_console()
    if _state["debug"]:
        console.print(traceback.format_exc(), markup=False)
    if isinstance(exc, KeyboardInterrupt):
        signal_name = "SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        console.print(f"{signal_name}: finished steps are cached and the next run resumes from them")
    elif isinstance(exc, (GateFailure, RegressionFailure, DeployFailure)):
        console.print(Text(exc.format(), style="bold red"))
    elif isinstance(exc, ModelzipError):
        console.print(Text.assemble(("error: ", "bold red"), exc.format()))
    else:
        console.print(Text.assemble(
            ("internal error: ", "bold red"), f"{type(exc).__name__}: {exc}\n"
            "  this is a bug in modelzip or a plugin; rerun with --debug and report the traceback"))


@app.command()
def run(
    recipe: RecipeArg,
    out: Annotated[Path | None, typer.Option(help="output directory (default: recipe's `output`)")] = None,
    set_: SetOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="rerun every step")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the final summary")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="if another run uses the output folder or cache, wait for it (default: exit 2)")] = False,
    junit: Annotated[Path | None, typer.Option(
        help="also write the gates as JUnit XML to this file (written when gates fail, too)")] = None,
) -> None:
    """Run a recipe and write model.onnx, report.json and report.md."""
    try:
        _terminate_like_interrupt()
        if device not in ("auto", "cpu", "cuda"):
            raise typer.BadParameter(f"expected auto, cpu or cuda, got {device!r}", param_hint="--device")
        from modelzip.recipe import load_recipe

        parsed = load_recipe(recipe, set_ or ())
        result = _run(parsed, out, no_cache, device, quiet, wait)
        if result is None:  # a non-zero torchrun rank: rank 0 reports
            return
        _print_run(result, quiet)
        unwritten = _ci_outputs(result, junit)
        if result.failed_targets:  # a target that did not convert or disagrees with the ONNX: exit 3
            raise DeployFailure(result.failed_targets)
        if result.failed_gates:  # a failed gate is the answer CI needs, even if --junit failed
            raise GateFailure(result.failed_gates)
        if unwritten is not None:
            raise unwritten
    except (typer.Exit, typer.BadParameter):
        raise
    except BaseException as exc:
        raise _fail(exc) from None


def _terminate_like_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C (exit 143 instead of 130), instead of killing us mid-write."""
    import signal
    import threading

    def raise_terminated(signum, frame):
        raise Terminated()

    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, raise_terminated)


def _run(recipe, out, no_cache: bool, device: str, quiet: bool, wait: bool):
    from modelzip.console import RichUI
    from modelzip.pipeline import RunOptions, run_recipe

    options = RunOptions(out=out, use_cache=not no_cache, device=device, ui=RichUI(quiet=quiet), wait=wait)
    return run_recipe(recipe, options)


def _print_run(result, quiet: bool) -> None:
    from rich.table import Table

    from modelzip import report as rep

    console = _out_console()
    data = result.report
    if not quiet:
        tables = [("steps", rep.summary_header(data), rep.summary_rows(data)),
                  ("latency (onnxruntime CPU)", rep.LATENCY_HEADER, rep.latency_rows(data))]
        if data.get("deploy"):
            tables.append(("deploy targets, each in its own runtime", rep.deploy_header(data), rep.deploy_rows(data)))
        for title, header, rows in tables:
            if rows:
                table = Table(*header, title=title, title_justify="left")
                for row in rows:
                    table.add_row(*_plain(row))
                console.print(table)
    final = result.record.final
    ratios = final.ratios
    headline = final.latency.headline if final.latency is not None else None
    speed = f", {ratios.speedup:.2f}x speedup ({headline.verdict})" if headline is not None else ""
    console.print(f"{data['status']}: accuracy {100 * final.metrics.accuracy:.2f}% "
                  f"({100 * ratios.accuracy_delta:+.2f} pp), {ratios.size:.2f}x smaller{speed} -> "
                  f"{result.output_dir / final.artifact}, report.json, report.md, report.html", markup=False)
    for warning in result.record.warnings:  # never change the exit code
        _err_console().print(f"warning: {warning.format()}", markup=False, style="yellow")
    for item in () if quiet else result.record.unchecked:
        _err_console().print(f"not checked: {item.format()}", markup=False)


def _ci_outputs(result, junit: Path | None) -> BaseException | None:
    """--junit, and report.md appended to $GITHUB_STEP_SUMMARY (a warning if it cannot be).

    Returns the error of a --junit file that could not be written (printed here as a
    warning), so the caller can still exit 1 for a failed gate, else 2.
    """
    from modelzip import ci

    unwritten = None
    if junit is not None:
        try:
            ci.write_junit(junit, result.gates, recipe=result.record.recipe_name, time_s=result.record.wall_time_s)
        except OSError as exc:
            unwritten = input_error_from_os(exc) or exc
            _err_console().print(f"warning: --junit {junit} was not written: {exc}", markup=False, style="yellow")
    warning = ci.append_step_summary((result.output_dir / "report.md").read_text(encoding="utf-8"))
    if warning:
        _err_console().print(f"warning: {warning}", markup=False, style="yellow")
    return unwritten


def _plain(cells):
    """Table cells as literal text: a layer or file name like `a[/]` is not rich markup."""
    from rich.text import Text

    return [Text(str(cell)) for cell in cells]


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe against the schema and the installed passes, loading no model or data."""
    try:
        from modelzip.recipe import load_recipe

        parsed = load_recipe(recipe, set_ or ())
    except BaseException as exc:
        raise _fail(exc) from None
    chain = " -> ".join(step.name for step in parsed.passes) or "(no passes)"
    targets = f"; deploy to {', '.join(s.target for s in parsed.deploy)}" if parsed.deploy else ""
    typer.echo(f"{recipe}: valid ({len(parsed.passes)} passes: {chain}{targets})")


@app.command()
def passes() -> None:
    """List installed passes with a one-line summary."""
    from rich.table import Table

    from modelzip.errors import PluginError
    from modelzip.registry import default_registry

    registry = default_registry()
    table = Table("pass", "takes", "gives", "summary")
    for name in registry.names():
        try:
            cls = registry.get(name)
            gives = cls.produces or "same"  # None: the kind it was given
            table.add_row(*_plain([name, "/".join(cls.consumes), gives, cls.summary]))
        except PluginError as exc:
            table.add_row(*_plain([name, "?", "?", f"broken plugin: {exc.what}"]), style="red")
    _out_console().print(table)


@app.command()
def targets() -> None:
    """List installed deploy targets: precisions, runtime, and whether it is installed here."""
    from rich.table import Table

    from modelzip.errors import PluginError
    from modelzip.target_registry import default_targets

    registry = default_targets()
    table = Table("target", "precisions", "runtime", "converts here", "measured here", "summary")
    for name in registry.names():
        try:
            cls = registry.get(name)
            precisions = cls.Config.model_fields["precision"].annotation.__args__
            config = cls.Config()
            missing = cls().missing(cls.Config(precision="int8") if "int8" in precisions else config)
            converts = "yes" if not missing else f"no: {cls.install}"
            why_not = cls().not_runnable() if not missing else "no"
            table.add_row(*_plain([name, " ".join(precisions), cls.runtime, converts,
                                   "yes" if why_not is None else f"no ({why_not})", cls.summary]))
        except PluginError as exc:
            table.add_row(*_plain([name, "?", "?", "?", "?", f"broken plugin: {exc.what}"]), style="red")
    _out_console().print(table)


@app.command()
def explain(name: Annotated[str, typer.Argument(help="pass name, e.g. export")]) -> None:
    """Show a pass's parameters: type, default, allowed values and help."""
    from rich.table import Table
    from rich.text import Text

    from modelzip.registry import default_registry

    try:
        cls = default_registry().get(name)  # an unknown name: UnknownPassError with a did-you-mean
    except BaseException as exc:
        raise _fail(exc) from None
    console = _out_console()
    console.print(Text.assemble((name, "bold"), f" (takes {'/'.join(cls.consumes)}): {cls.summary}"))
    table = Table("parameter", "type", "default", "allowed", "help")
    for param, spec in _parameters(cls.Config):
        table.add_row(*_plain([param, *spec]))
    console.print(table)


def _parameters(config_cls):
    from modelzip.schema_text import describe_fields

    return describe_fields(config_cls)


@app.command()
def schema() -> None:
    """Print the JSON Schema of recipes (for yaml-language-server and editors)."""
    from modelzip.recipe import recipe_json_schema

    try:
        typer.echo(json.dumps(recipe_json_schema(), indent=2))
    except BaseException as exc:
        raise _fail(exc) from None


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"


@app.command("compare")
def compare_runs(
    runs: Annotated[list[Path], typer.Argument(help="run folders, each with the report.json `run` wrote",
                                               show_default=False)],
    baseline: Annotated[Path | None, typer.Option(
        help="the run the others are compared with (default: the first RUN); may be one of RUNS")] = None,
    fail_on: Annotated[list[str] | None, typer.Option(
        "--fail-on", help="exit 1 when a run regresses past KEY=VALUE[,...] against the baseline run. "
                          "Keys: " + _FAIL_ON_KEYS)] = None,
    format_: Annotated[Format, typer.Option("--format", help="table (terminal), markdown (a pull request "
                                                             "comment) or json")] = Format.table,
) -> None:
    """Show runs side by side from their report.json: accuracy, size, MACs, latency, deltas vs a baseline."""
    from modelzip import compare as cmp

    try:
        comparison = cmp.compare(runs, baseline=baseline, thresholds=cmp.parse_fail_on(fail_on or ()))
    except BaseException as exc:
        raise _fail(exc) from None
    if format_ is Format.json:
        typer.echo(json.dumps(comparison.to_json(), indent=2))
    elif format_ is Format.markdown:
        typer.echo(cmp.render_markdown(comparison), nl=False)
    else:
        _print_comparison(comparison)
    try:
        comparison.raise_on_failures()
    except BaseException as exc:
        raise _fail(exc) from None


def _print_comparison(comparison) -> None:
    from rich.table import Table

    from modelzip import compare as cmp

    console = _out_console()
    table = Table(*cmp.HEADER, title=f"runs vs baseline {comparison.baseline.label}", title_justify="left")
    for row in cmp.rows(comparison):
        table.add_row(*_plain(row))
    console.print(table)
    for line in (cmp.LEGEND, *comparison.notes, cmp.summary_line(comparison)):
        if line:
            console.print(line, markup=False)


@app.command()
def sweep(
    recipe: RecipeArg,
    grid: Annotated[list[str], typer.Option(
        "--grid", help="KEY=V1,V2,... a recipe key (as in --set) and its values; repeat it for the "
                       "cartesian product", show_default=False)],
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="sweep folder: sweep.json, sweep.html, a run folder per point, the shared step cache "
             "(default: the recipe's output + '-sweep')")] = None,
    emit_matrix: Annotated[bool, typer.Option(
        "--emit-matrix", help="print the points as a JSON matrix (CI matrix job, cluster job array) "
                              "instead of running them; `modelzip collect` reports on their runs")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="rerun every step of every point")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print one line per point")] = False,
) -> None:
    """Run a recipe over a grid of overrides, sharing one step cache; write sweep.json and
    sweep.html with the Pareto fronts (accuracy vs size, accuracy vs latency)."""
    try:
        _terminate_like_interrupt()
        from modelzip import sweep as sw

        plan = sw.plan_sweep(recipe, sw.parse_grid(grid), sets=tuple(set_ or ()), out=out)
        if emit_matrix:
            typer.echo(json.dumps(sw.emit_matrix(plan, str(recipe)), indent=2))
            return
        result = _run_sweep(plan, no_cache, device, quiet)
        _finish_sweep(plan.out, sw.sweep_report(plan, result))
    except (typer.Exit, typer.BadParameter):
        raise
    except BaseException as exc:
        raise _fail(exc) from None


def _run_sweep(plan, no_cache: bool, device: str, quiet: bool):
    from modelzip import sweep as sw
    from modelzip.console import RichUI
    from modelzip.pipeline import RunOptions, run_recipe

    ui = RichUI(quiet=True) if quiet else RichUI()
    console = _err_console()
    total = len(plan.points)

    def run(recipe, folder):
        return run_recipe(recipe, RunOptions(out=folder, use_cache=not no_cache, device=device, ui=ui))

    def on_point(point, status):
        console.print(f"[{point.index + 1}/{total}] {point.label}: {status}", markup=False)

    return sw.run_sweep(plan, run, on_point=on_point)


def _finish_sweep(out: Path, report: dict) -> None:
    """Write and summarize a sweep report; exit 3 when a point did not finish (the others did)."""
    from modelzip.errors import EXIT_RUN_FAILED
    from modelzip.sweep_html import write_sweep

    json_path, html_path = write_sweep(out, report)
    console = _out_console()
    counts = report["counts"]
    console.print(f"{len(report['points'])} points: {counts['passed']} passed, {counts['gates_failed']} failed gates, "
                  f"{counts['error']} did not finish -> {json_path}, {html_path}", markup=False)
    for name, front in report["pareto"].items():
        console.print(f"Pareto front (accuracy vs {name}): {', '.join(front) or '-'}", markup=False)
    for point in report["points"]:
        if point["status"] == "error":
            _err_console().print(f"error in {point['name']}: {point['error']}", markup=False, style="red")
    if counts["error"]:
        raise typer.Exit(EXIT_RUN_FAILED)


class TuneObjective(StrEnum):
    size = "size"
    latency = "latency"


@app.command()
def tune(
    recipe: RecipeArg,
    max_accuracy_drop: Annotated[float, typer.Option(
        "--max-accuracy-drop", min=0, max=1, help="the budget: final accuracy at most this far below the "
                                                  "input model's (0.005 = 0.5 pp)", show_default=False)],
    objective: Annotated[TuneObjective, typer.Option(
        help="size: the smallest zipped file; latency: the highest speedup at data.batch_size")
    ] = TuneObjective.size,
    over: Annotated[list[str] | None, typer.Option(
        "--over", help="KEY=LOW..HIGH: tune this knob over this range (default: the compression strength "
                       "of each pass: sparsity, target_macs, rank_ratio/energy, bits); repeatable")] = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="tuned.yaml, sweep.json, sweep.html and a run folder per point (default: the recipe's "
             "output + '-tune')")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print one line per point")] = False,
) -> None:
    """Find the most compressed recipe within an accuracy budget (bisection per knob on runs
    without latency, then the winner in full); write it as tuned.yaml."""
    try:
        _terminate_like_interrupt()
        from modelzip import tune as tn
        from modelzip.console import RichUI
        from modelzip.pipeline import RunOptions, run_recipe
        from modelzip.sweep_html import write_sweep

        plan = tn.plan_tune(recipe, objective=objective.value, max_drop=max_accuracy_drop, over=tuple(over or ()),
                            sets=tuple(set_ or ()), out=out)
        ui = RichUI(quiet=True) if quiet else RichUI()
        console = _err_console()
        for knob in plan.knobs:
            console.print(f"knob {knob.describe()}", markup=False)
        result, report = tn.run_tune(
            plan, lambda r, folder: run_recipe(r, RunOptions(out=folder, device=device, ui=ui)),
            on_trial=lambda label, status: console.print(f"  {label}: {status}", markup=False))
        json_path, html_path = write_sweep(plan.out, report)
        _finish_tune(plan, result, report, json_path, html_path)
    except (typer.Exit, typer.BadParameter):
        raise
    except BaseException as exc:
        raise _fail(exc) from None


def _finish_tune(plan, result, report, json_path: Path, html_path: Path) -> None:
    """tuned.yaml for the winner, or exit 1 (like a failed gate) when no point kept the budget."""
    from modelzip import tune as tn
    from modelzip.errors import EXIT_GATE_FAILED
    from modelzip.recipe import load_recipe

    console = _out_console()
    tried = len(result.trials)
    if not report["tune"]["within_budget"]:
        _err_console().print(f"no point within the budget (accuracy drop <= {plan.max_drop}) among {tried} tried; "
                             f"see {json_path}", markup=False, style="bold red")
        raise typer.Exit(EXIT_GATE_FAILED)
    sets = [*plan.sets, *(f"{k}={v}" for k, v in result.chosen.items())]
    tuned = plan.out / "tuned.yaml"
    tn.write_tuned(tuned, load_recipe(plan.recipe_path, sets), result.chosen, objective=plan.objective,
                   max_drop=plan.max_drop)
    final = result.final
    speed = f", {final.speedup:.2f}x speedup" if final.speedup else ""
    chosen = ", ".join(f"{k}={v}" for k, v in result.chosen.items())
    console.print(f"tuned ({tried} points tried): {chosen} -> accuracy {100 * final.accuracy:.2f}% "
                  f"({100 * final.accuracy_delta:+.2f} pp), {final.size_bytes / 1e6:.3f} MB "
                  f"({(final.zip_bytes or 0) / 1e6:.3f} MB zipped){speed}", markup=False)
    console.print(f"-> {tuned}, {json_path}, {html_path}", markup=False)


@app.command()
def collect(
    runs: Annotated[list[Path], typer.Argument(help="run folders (e.g. the points of `sweep --emit-matrix`)",
                                               show_default=False)],
    out: Annotated[Path, typer.Option(help="where sweep.json and sweep.html go")] = Path("sweep"),
) -> None:
    """Build a sweep report (sweep.json, sweep.html) from runs made elsewhere, labelled by the
    recipe keys whose values differ between them."""
    try:
        from modelzip.sweep_points import collect as collect_runs

        _finish_sweep(out, collect_runs(runs))
    except (typer.Exit, typer.BadParameter):
        raise
    except BaseException as exc:
        raise _fail(exc) from None


def main() -> None:
    app(prog_name="modelzip")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
