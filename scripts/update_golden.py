"""Regenerate tests/golden/validate_errors.txt after an intended change of the message
(e.g. a new built-in pass in the "available:" list). Review the diff before committing."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelzip.errors import RecipeError  # noqa: E402
from modelzip.recipe import load_recipe  # noqa: E402
from tests.test_recipe import BROKEN, GOLDEN  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "recipe.yaml"
    path.write_text(BROKEN)
    try:
        load_recipe(path)
    except RecipeError as exc:
        (GOLDEN / "validate_errors.txt").write_text(exc.format().replace(str(exc.file), "<recipe>") + "\n")
        print(f"updated {GOLDEN / 'validate_errors.txt'}")
