"""Recipe validation: every problem at once, with line, path and suggestion."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelzip import Pass, PassConfig
from modelzip.errors import InputError, RecipeError
from modelzip.recipe import load_recipe, parse_recipe, recipe_json_schema
from modelzip.registry import PassRegistry
from tests.conftest import synthetic_recipe

GOLDEN = Path(__file__).parent / "golden"

VALID = """
version: 1
name: tiny
model:
  source: modelzip.zoo:tiny_cnn
  input_shape: [1, 1, 28, 28]
data:
  dataset: fashion-mnist
passes:
  - export: {opset: 18}
"""

# One misspelled pass, one misspelled key, a string where a number belongs,
# and an out-of-range gate: all four must be reported together.
BROKEN = """\
version: 1
name: broken
model:
  source: modelzip.zoo:fashion_cnn
  input_shape: [1, 1, 28, 28]
  chekpoint: weights.pt
data:
  dataset: fashion-mnist
  batch_size: lots
passes:
  - exprot: {opset: 17}
  - export: {opset: 17, dynamic_bach: true}
gates:
  max_accuracy_drop: 2
"""


def test_valid_recipe_fills_defaults(recipe_file):
    recipe = load_recipe(recipe_file(VALID))
    assert recipe.data.batch_size == 256
    assert recipe.passes[0].name == "export"
    assert recipe.passes[0].config.opset == 18
    assert recipe.passes[0].config.exporter == "dynamo"
    assert recipe.output_dir == recipe.base_dir / "runs" / "tiny"


def test_resolved_recipe_round_trips(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file(VALID))
    dumped = recipe_file(yaml.safe_dump(recipe.to_data(), sort_keys=False), "resolved.yaml")
    again = load_recipe(dumped)
    assert again.to_data() == recipe.to_data()


def test_all_problems_reported_at_once_with_lines(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(BROKEN))
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {"model.chekpoint", "data.batch_size", "passes[0].exprot",
                             "passes[1].export.dynamic_bach", "gates.max_accuracy_drop"}
    assert problems["model.chekpoint"].line == 6
    assert "'checkpoint'" in problems["model.chekpoint"].suggestion
    assert problems["data.batch_size"].line == 9
    assert "'lots'" in problems["data.batch_size"].message
    assert problems["passes[0].exprot"].line == 11
    assert "did you mean 'export'" in problems["passes[0].exprot"].suggestion
    assert "'dynamic_batch'" in problems["passes[1].export.dynamic_bach"].suggestion
    assert info.value.exit_code == 2


def test_error_message_matches_golden(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(BROKEN))
    text = info.value.format().replace(str(info.value.file), "<recipe>")
    assert text == (GOLDEN / "validate_errors.txt").read_text().rstrip("\n")


def test_unknown_pass_does_not_cascade(recipe_file):
    """One bad name gives one message, not one per parameter (Olive#1365)."""
    body = VALID.replace("- export: {opset: 18}", "- exprot: {opset: 18, a: 1, b: 2}")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(body))
    assert len(info.value.problems) == 1


def test_duplicate_keys_are_errors(recipe_file):
    body = VALID.replace("name: tiny", "name: tiny\nname: other")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(body))
    assert info.value.problems[0].path == "name"
    assert "duplicate" in info.value.problems[0].message


def test_yaml_syntax_error_has_line(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file("version: 1\nname: [unclosed\n"))
    assert info.value.problems[0].line is not None
    assert "invalid YAML" in info.value.problems[0].message


class TorchOnlyPass(Pass):
    name = "torch_only"
    summary = "takes torch models only"
    Config = PassConfig

    def run(self, artifact, config, ctx):
        return artifact


def test_pass_chain_is_checked(recipe_file):
    registry = PassRegistry.from_entry_points()
    registry.register(TorchOnlyPass)
    body = VALID.replace("- export: {opset: 18}", "- torch_only: {}\n  - export: {}\n  - torch_only: {}")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(body), registry=registry)
    (problem,) = info.value.problems
    assert problem.path == "passes[2].torch_only"
    assert "model is onnx" in problem.message


def test_unknown_dataset_suggests(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(VALID.replace("fashion-mnist", "fashion_mnist")))
    assert "did you mean 'fashion-mnist'" in info.value.problems[0].message


def test_unsupported_version(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(VALID.replace("version: 1", "version: 2")))
    assert "version" in info.value.problems[0].path


def test_missing_required_sections(recipe_file):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file("version: 1\nname: x\n"))
    assert {p.path for p in info.value.problems} == {"model", "data"}


def test_overrides_apply_and_validate(recipe_file):
    path = recipe_file(VALID)
    recipe = load_recipe(path, ["passes.0.export.opset=19", "data.limit_eval=100", "seed=3"])
    assert recipe.passes[0].config.opset == 19
    assert recipe.data.limit_eval == 100 and recipe.seed == 3
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["passes.0.export.opset=99", "passes.4.export.opset=18", "nonsense"])
    sources = {p.source for p in info.value.problems}
    assert sources == {"--set"}
    assert len(info.value.problems) == 3


def test_override_of_an_aliased_node_changes_only_its_path():
    body = (VALID.replace("  input_shape:", "  args: &shared {width: 8}\n  input_shape:")
            .replace("  dataset: fashion-mnist", "  dataset: modelzip.testing:synthetic_dataset\n  args: *shared"))
    recipe = parse_recipe(body, overrides=["model.args.width=16"])
    assert recipe.model.args == {"width": 16} and recipe.data.args == {"width": 8}


def test_string_pass_entry_means_defaults(recipe_file):
    recipe = load_recipe(recipe_file(VALID.replace("- export: {opset: 18}", "- export")))
    assert recipe.passes[0].config.opset == 18


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert info.value.exit_code == 2
    assert "nope.yaml" in str(info.value.got)


def test_relative_paths_resolve_against_recipe_dir(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    recipe = parse_recipe(VALID + "output: out\n", base_dir=sub)
    assert recipe.output_dir == sub / "out"


def test_json_schema_lists_pass_parameters():
    schema = recipe_json_schema()
    items = schema["properties"]["passes"]["items"]["oneOf"]
    export = next(i for i in items if "export" in i["properties"])
    assert "opset" in str(export)
    assert schema["additionalProperties"] is False


SHIPPED = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.passes, path


# --------------------------------------------------------------------------- hostile input
# Each of these crashed, hung or passed `validate` before (issue #11); every one must now be
# a RecipeError (exit 2) that names the key path or the line.

# 9 levels of 9 aliases: 590 bytes that expand to 9**9 (387 million) strings.
BILLION_LAUGHS = VALID + "lol:\n" + "".join(
    f"  l{k}: &l{k} [" + ", ".join([f"*l{k - 1}" if k else '"lol"'] * 9) + "]\n" for k in range(9))


def _problems(body: str | bytes, overrides=()) -> dict[str, object]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(body, overrides=overrides)
    assert info.value.exit_code == 2
    return {p.path: p for p in info.value.problems}


def test_alias_bomb_is_refused_without_expanding_it():
    (problem,) = _problems(BILLION_LAUGHS).values()
    assert "expands to more than 100,000 nodes" in problem.message
    assert problem.path.startswith("lol.l") and problem.line is not None


def test_aliases_within_limits_still_work():
    body = VALID.replace("  input_shape: [1, 1, 28, 28]",
                         "  input_shape: &shape [1, 1, 28, 28]\n  args: {s: *shape}")
    assert parse_recipe(body).model.args == {"s": [1, 1, 28, 28]}


@pytest.mark.parametrize("value", ["&r [1, *r]", "&r {k: *r}", "&r {<<: *r}"])
def test_recursive_alias_is_refused(value):
    problems = _problems(VALID + f"model2: {value}\n")
    (problem,) = problems.values()
    assert "recursive alias" in problem.message
    assert problem.path.startswith("model2") and problem.line == 11


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "{a: " * 60 + "1" + "}" * 60])
def test_deep_nesting_is_refused(nested):
    (problem,) = _problems(VALID + f"deep: {nested}\n").values()
    assert "nested deeper than 50 levels" in problem.message and problem.line == 11


def test_depth_counts_through_aliases():
    chain = "".join(f"a{k}: &a{k} [{f'*a{k - 1}' if k else 1}]\n" for k in range(60))
    (problem,) = _problems(VALID + chain).values()
    assert "counting through aliases" in problem.message and problem.line is not None


def test_complex_keys_are_problems_with_lines():
    problems = _problems(VALID + "? [a, b]\n: 1\nmodel2:\n  {x: 1}: 2\n")
    assert {(p.path, p.line) for p in problems.values()} == {("", 11), ("model2", 14)}
    assert all("used as a key" in p.message for p in problems.values())


def test_not_utf8_names_offset_and_line():
    (problem,) = _problems(VALID.encode() + b"output: caf\xe9\n").values()
    assert problem.line == 11 and "not UTF-8" in problem.message and "column 12" in problem.message


def test_oversized_file_is_refused(recipe_file):
    path = recipe_file(VALID + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    (problem,) = info.value.problems
    assert "larger than the limit of 1,048,576 bytes" in problem.message
    assert problem.line == 10  # recipe_file drops VALID's leading newline


@pytest.mark.parametrize("value, reason", [
    ("2001-13-45", "month must be in 1..12"),  # looks like a date to YAML
    ("9" * 5000, "Exceeds the limit"),  # Python refuses ints this long
    ("!!float x", "could not convert"),
    ('"a\x00"', "not allowed"),
])
def test_scalars_yaml_cannot_build_are_problems(value, reason):
    (problem,) = _problems(VALID + f"output: {value}\n").values()
    assert reason in problem.message and problem.line == 11
    assert "set_int_max_str_digits" not in problem.message  # Python's advice, not the user's fix


def test_empty_document():
    (problem,) = _problems("# nothing yet\n").values()
    assert "got an empty file" in problem.message and problem.line == 1


@pytest.mark.parametrize("override, path, fragment", [
    ("passes.².opset=1", "passes.².opset", "no list index '²'"),  # "²".isdigit() is True
    ("passes.99999999999999999999999.x=1", "passes.99999999999999999999999.x", "no list index"),
    ("a..b=1", "a..b=1", "empty key segment"),
    ("=1", "=1", "expected KEY=VALUE"),
    ("model.args.x=" + "[" * 100 + "]" * 100, "model.args.x", "nested deeper than 50"),
    ("model.args.x=&a [*a]", "model.args.x", "recursive alias"),
])
def test_odd_set_overrides(override, path, fragment):
    problem = _problems(VALID, [override])[path]
    assert fragment in problem.message and problem.source == "--set"


EDGE = [  # (recipe text edit, key path of the problem, what the message says)
    (("seed: 0", "seed: 1.0e+18"), "seed", "less than or equal to 4294967295"),  # an int to pydantic
    (("seed: 0", "seed: -1"), "seed", "greater than or equal to 0"),
    (("epochs: 1", "epochs: 1, lr: .inf"), "passes[1].finetune.lr", "finite number"),
    (("epochs: 1", "epochs: 1, lr: .nan"), "passes[1].finetune.lr", "finite number"),
    (("epochs: 1", "epochs: 1, batch_size: 1.0e+18"), "passes[1].finetune.batch_size", "65536"),
    (("batch_size: 64", "batch_size: 1.0e+18"), "data.batch_size", "65536"),
    (("mode: static", "mode: static, calibration_batch_size: 100000"),
     "passes[2].quantize.calibration_batch_size", "4096"),
    (("repeats: 5}", "repeats: 5, threads: 100000}"), "evaluation.threads", "256"),
    (("output: out", "output: " + "o" * 5000), "output", "at most 4096 characters"),
    (("output: out", "cache_dir: a/" + "b" * 300), "cache_dir", "at most 255 bytes"),
    (("teacher: baseline", "teacher: t/" + "é" * 128 + ".pt"),  # 256 bytes in UTF-8
     "passes[1].finetune.distill.teacher", "255 bytes"),
    (("opset: 18", "opset: 18, parity_atol: .inf"), "passes[3].export.parity_atol", "finite number"),
    (("opset: 18", "opset: 18, parity_rtol: 2"), "passes[3].export.parity_rtol", "less than or equal to 1"),
    (("val_samples: 32", "val_samples: 1.0e+18"), "data.val_samples", "less than or equal to"),
    (("max_accuracy_drop: 0.05", "min_speedup: .inf"), "gates.min_speedup", "finite number"),
    (("input_shape: [1, 1, 28, 28]", "input_shape: [1, 3, 65536, 65536]"), "model.input_shape",
     "at most 1,073,741,824 elements"),
    (("epochs: 1", "epochs: 1000000"), "passes[1].finetune.epochs", "10000"),
]


@pytest.mark.parametrize("edit, path, fragment", EDGE, ids=[e[1] for e in EDGE])
def test_edge_values_are_refused_by_validate(edit, path, fragment):
    """Values that passed `validate` and then failed or hung at run time."""
    base = synthetic_recipe(
        "  - prune: {method: magnitude, sparsity: 0.5}\n"
        "  - finetune: {epochs: 1, distill: {teacher: baseline}}\n"
        "  - quantize: {mode: static}\n  - export: {opset: 18}") + "gates: {max_accuracy_drop: 0.05}\n"
    assert edit[0] in base
    problems = _problems(base.replace(edit[0], edit[1], 1))
    assert set(problems) == {path}
    assert fragment in problems[path].message
    assert problems[path].line is not None


def test_quantizing_twice_is_refused():
    body = VALID.replace("- export: {opset: 18}", "- quantize: {}\n  - quantize: {mode: dynamic}\n  - export")
    (problem,) = _problems(body).values()
    assert problem.path == "passes[1].quantize" and problem.line == 11
    assert "already quantized by passes[0].quantize" in problem.message
    assert "remove this one or passes[0].quantize" in problem.suggestion


def _nested_configs(model) -> set[type]:
    from pydantic import BaseModel

    from modelzip.recipe import _model_in

    found = {model}
    for field in model.model_fields.values():
        inner = _model_in(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in found:
            found |= _nested_configs(inner)
    return found


@pytest.mark.parametrize("name", PassRegistry.from_entry_points().names())
def test_every_pass_config_refuses_inf_and_nan(name):
    for model in _nested_configs(PassRegistry.from_entry_points().get(name).Config):
        assert model.model_config.get("allow_inf_nan") is False, model
        assert model.model_config.get("extra") == "forbid", model


def test_recipe_sections_refuse_inf_and_nan():
    from modelzip.recipe import Recipe

    for model in _nested_configs(Recipe):
        assert model.model_config.get("allow_inf_nan") is False, model


def test_long_values_are_clipped_in_messages():
    (problem,) = _problems(VALID.replace("name: tiny", "name: " + "é" * 5000)).values()
    assert problem.path == "name" and len(problem.format()) < 200


def test_base_dir_is_not_a_recipe_key():
    (problem,) = _problems(VALID + "base_dir: /etc\n").values()
    assert problem.path == "base_dir" and problem.line == 11


def test_many_problems_are_listed_up_to_a_cap():
    body = VALID + "".join(f"extra{k}: 1\n" for k in range(80))
    with pytest.raises(RecipeError) as info:
        parse_recipe(body)
    assert len(info.value.problems) == 80
    assert "... and 30 more" in info.value.format()


# --------------------------------------------------------------------------- cross-field checks


def _cross_problems(recipe_file, body: str) -> dict:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(body))
    return {p.path: p for p in info.value.problems}


@pytest.mark.parametrize("data, path, fragment", [
    ("  dataset: fashion-mnist\n  normalize: {mean: [0.5, 0.5, 0.5], std: [0.5]}",
     "data.normalize.mean", "fashion-mnist images have 1 channel, so `normalize.mean` needs 1 value, not 3"),
    ("  dataset: cifar10\n  normalize: {mean: [0.5], std: [0.5]}",
     "data.normalize.std", "cifar10 images have 3 channels"),
    ("  dataset: modelzip.testing:synthetic_dataset\n  normalize: {mean: [0.5], std: [0.5]}",
     "data.normalize", "`normalize` applies only to built-in datasets"),
    ("  dataset: mnist\n  image_size: 32", "data.image_size",
     "`image_size` applies only to dataset: imagefolder"),
    ("  dataset: cifar10\n  args: {train: 10}", "data.args",
     "`args` applies only to a <module>:<callable> dataset"),
])
def test_data_options_are_checked_against_the_dataset(recipe_file, data, path, fragment):
    problems = _cross_problems(recipe_file, VALID.replace("  dataset: fashion-mnist", data))
    assert fragment in problems[path].message
    assert problems[path].line == 8  # the key's own line (normalize's, for mean/std in flow style)


def test_data_options_that_apply_are_accepted(recipe_file):
    body = VALID.replace("  dataset: fashion-mnist",
                         "  dataset: imagefolder\n  image_size: 32\n  normalize: {mean: [0, 0, 0], std: [1, 1, 1]}")
    assert load_recipe(recipe_file(body)).data.image_size == 32


def test_speedup_gate_needs_latency(recipe_file):
    body = VALID + "gates: {min_speedup: 1.5}\nevaluation:\n  latency: false\n"
    problem = _cross_problems(recipe_file, body)["gates.min_speedup"]
    assert problem.line == 10
    assert "could never pass" in problem.message and "evaluation.latency: true" in problem.message
    assert load_recipe(recipe_file(VALID + "gates: {min_speedup: 1.5}\n")).gates.min_speedup == 1.5


def test_cross_field_checks_hold_outside_recipes_too():
    from pydantic import ValidationError

    from modelzip.recipe import DataSpec, Normalize

    with pytest.raises(ValidationError):
        DataSpec(dataset="modelzip.testing:synthetic_dataset", normalize=Normalize(mean=(0.0,), std=(1.0,)))


def test_recipe_remembers_its_registry(recipe_file):
    from modelzip.registry import PassRegistry, default_registry

    registry = PassRegistry()
    registry.register(default_registry().get("export"))
    recipe = load_recipe(recipe_file(VALID), registry=registry)
    assert recipe.registry is registry
    assert "registry" not in recipe.to_data() and recipe.model_copy().registry is registry


def test_optimize_false_with_a_final_optimize_pass_is_an_error(recipe_file):
    path = recipe_file(synthetic_recipe("  - export: {}\n  - optimize: {}") + "optimize: false\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    (problem,) = info.value.problems
    assert problem.path == "optimize" and problem.line is not None
    assert "runs anyway" in problem.message and "remove `optimize: false`" in problem.suggestion
    assert load_recipe(path, ["passes=[{export: {}}]"]).optimize is False
