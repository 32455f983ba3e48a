"""Train a zoo model on a built-in dataset and save its state_dict.

Example (Fashion-MNIST from /usr/share/datasets, see modelzip.sources.data):

    python scripts/train_baseline.py --model fashion_cnn --epochs 4 --out checkpoints/fashion_cnn.pt

A multi-task model trains on the sum of its tasks' losses (the dataset's tasks: multi-fashion's
left and right), and reports each task's accuracy:

    python scripts/train_baseline.py --model multitask_cnn --dataset multi-fashion --epochs 4

``--task`` trains a single-output zoo model on one task of a multi-task dataset (the teachers of
the ``merge`` pass, recipes/examples/merge.yaml):

    python scripts/train_baseline.py --model fashion_cnn --dataset multi-fashion --task left \
        --out checkpoints/left_cnn.pt
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from modelzip.atomic import atomic_path
from modelzip.errors import ModelzipError
from modelzip.evaluation.accuracy import torch_task_accuracies
from modelzip.recipe import DataSpec, ModelSpec
from modelzip.sources.data import load_data
from modelzip.sources.models import build_model
from modelzip.training import train_classifier
from modelzip.zoo import TASK_ZOO, ZOO, list_models

DATASET_TASKS = {"multi-fashion": ("left", "right")}  # built-in multi-task datasets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_cnn",
                        help=f"a zoo model ({', '.join(list_models() + sorted(TASK_ZOO))}) or torchvision:<name>")
    parser.add_argument("--dataset", default="fashion-mnist", help="a built-in dataset or module:callable")
    parser.add_argument("--task", default=None,
                        help="a multi-task dataset's task: train a single-output model on it alone")
    parser.add_argument("--epochs", type=int, default=4, help="4 reach 91%% on Fashion-MNIST")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--val-samples", type=int, default=5000, help="held out of train for val accuracy")
    parser.add_argument("--out", type=Path, default=None, help="default: checkpoints/<model>.pt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = DataSpec(dataset=args.dataset, limit_train=args.limit_train, val_samples=args.val_samples)
        tasks = _tasks(args.dataset, args.task)
        bundle = load_data(spec, base_dir=Path.cwd(), seed=args.seed, tasks=tasks)
    except ValidationError as exc:  # e.g. an unknown --dataset, with a did-you-mean
        print(f"invalid option: {exc.errors()[0]['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except ModelzipError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    torch.manual_seed(args.seed)  # the same initial weights for a seed
    model = _build(args.model, bundle.num_classes or 10, bundle.sample_shape, None if args.task else tasks)
    named = f"{args.model} ({args.task})" if args.task else args.model
    print(f"{named}: {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"train {len(bundle.train)}, validation {len(bundle.validation)}, eval {len(bundle.eval)}")
    started = time.perf_counter()
    train_classifier(model, bundle, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     seed=args.seed, log=print)
    accuracy = torch_task_accuracies(model, bundle.batches("eval"))
    per_task = "".join(f", {task} {value:.4f}" for task, value in accuracy.named.items())
    print(f"eval accuracy {accuracy.mean:.4f}{per_task} after {args.epochs} epochs, "
          f"{time.perf_counter() - started:.0f}s")
    out = args.out or Path("checkpoints") / f"{args.model.replace(':', '-')}.pt"
    with atomic_path(out) as partial:  # a crash never leaves half a checkpoint
        torch.save(model.state_dict(), partial)
    print(f"saved {out}")
    return 0


def _tasks(dataset: str, task: str | None) -> tuple[str, ...] | None:
    """The tasks the targets carry: the dataset's, or the one ``--task`` names."""
    tasks = DATASET_TASKS.get(dataset)
    if task is None:
        return tasks
    if tasks is None or task not in tasks:
        raise SystemExit(f"--task {task!r}: expected one of the tasks of a multi-task dataset "
                         f"({', '.join(f'{d}: {list(t)}' for d, t in DATASET_TASKS.items())})")
    return (task,)


def _build(name: str, num_classes: int, sample_shape: tuple[int, ...],
           tasks: tuple[str, ...] | None = None) -> torch.nn.Module:
    """A zoo model, or a torchvision one through the same path a recipe's model.source takes
    (``in_channels`` adapted to the dataset's), so the checkpoint loads into that recipe."""
    if tasks is not None:
        if name not in TASK_ZOO:
            raise SystemExit(f"{name!r} has one output; this dataset has the tasks {list(tasks)}: "
                             f"use one of {sorted(TASK_ZOO)}")
        return TASK_ZOO[name](tasks=tasks, num_classes=num_classes, in_channels=sample_shape[0],
                              size=sample_shape[-1])
    if name in TASK_ZOO:
        raise SystemExit(f"{name!r} is a multi-task model: use a multi-task dataset ({sorted(DATASET_TASKS)})")
    if not name.startswith("torchvision:"):
        if name not in ZOO:
            raise SystemExit(f"unknown model {name!r}: expected one of {list_models()} or torchvision:<name>")
        factory = ZOO[name]
        sized = {"size": sample_shape[-1]} if "size" in inspect.signature(factory).parameters else {}
        return factory(num_classes=num_classes, in_channels=sample_shape[0], **sized)
    spec = ModelSpec(source=name, args={"num_classes": num_classes}, input_shape=(1, *sample_shape),
                     in_channels=sample_shape[0])
    return build_model(spec, Path.cwd())


if __name__ == "__main__":
    sys.exit(main())
