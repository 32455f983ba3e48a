"""Recipe validation: every problem at once, with line, path and suggestion."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelzip import Pass, PassConfig
from modelzip.errors import InputError, RecipeError
from modelzip.recipe import load_recipe, parse_recipe, recipe_json_schema
from modelzip.registry import PassRegistry

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
