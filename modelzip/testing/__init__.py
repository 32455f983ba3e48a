"""Helpers shared by modelzip's tests, docs and plugin authors' tests.

A plugin author tests a pass without a recipe file or a dataset on disk::

    from modelzip.testing import check_pass_contract, make_context, tiny_artifact

    def test_my_pass_keeps_the_contract():
        check_pass_contract(MyPass)                       # or MyPass, MyPass.Config(...)

    def test_my_pass_does_what_it_says(tmp_path):
        ctx = make_context("my_pass", work_dir=tmp_path)  # synthetic data, tiny_cnn baseline
        out = MyPass().run(tiny_artifact("onnx", work_dir=tmp_path), MyPass.Config(), ctx)

``synthetic_dataset`` is a ``<module>:<callable>`` data source: small, seeded,
learnable (the label is the brightest quadrant band), and instant to build.
Everything here imports torch only when called.
"""
from modelzip.testing.contract import check_pass_contract
from modelzip.testing.fixtures import (
    INPUT_SHAPE,
    NUM_CLASSES,
    make_context,
    synthetic_dataset,
    tiny_artifact,
    tiny_recipe,
)

__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "check_pass_contract", "make_context", "synthetic_dataset",
           "tiny_artifact", "tiny_recipe"]
