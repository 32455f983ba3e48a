"""Train a zoo model on a built-in dataset and save its state_dict.

Example (Fashion-MNIST from /usr/share/datasets, see modelzip.sources.data):

    python scripts/train_baseline.py --model fashion_cnn --epochs 4 --out checkpoints/fashion_cnn.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from modelzip.atomic import atomic_path
from modelzip.errors import ModelzipError
from modelzip.evaluation.accuracy import torch_accuracy
from modelzip.recipe import DataSpec, ModelSpec
from modelzip.sources.data import load_data
from modelzip.sources.models import build_model
from modelzip.training import train_classifier
from modelzip.zoo import ZOO, list_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_cnn",
                        help=f"a zoo model ({', '.join(list_models())}) or torchvision:<name>")
    parser.add_argument("--dataset", default="fashion-mnist", help="a built-in dataset or module:callable")
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
        bundle = load_data(spec, base_dir=Path.cwd(), seed=args.seed)
    except ValidationError as exc:  # e.g. an unknown --dataset, with a did-you-mean
        print(f"invalid option: {exc.errors()[0]['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except ModelzipError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    torch.manual_seed(args.seed)  # the same initial weights for a seed
    model = _build(args.model, bundle.num_classes or 10, bundle.sample_shape)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"train {len(bundle.train)}, validation {len(bundle.validation)}, eval {len(bundle.eval)}")
    started = time.perf_counter()
    train_classifier(model, bundle, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     seed=args.seed, log=print)
    accuracy = torch_accuracy(model, bundle.batches("eval"))
    print(f"eval accuracy {accuracy:.4f} after {args.epochs} epochs, {time.perf_counter() - started:.0f}s")
    out = args.out or Path("checkpoints") / f"{args.model.replace(':', '-')}.pt"
    with atomic_path(out) as partial:  # a crash never leaves half a checkpoint
        torch.save(model.state_dict(), partial)
    print(f"saved {out}")
    return 0


def _build(name: str, num_classes: int, sample_shape: tuple[int, ...]) -> torch.nn.Module:
    """A zoo model, or a torchvision one through the same path a recipe's model.source takes
    (``in_channels`` adapted to the dataset's), so the checkpoint loads into that recipe."""
    if not name.startswith("torchvision:"):
        if name not in ZOO:
            raise SystemExit(f"unknown model {name!r}: expected one of {list_models()} or torchvision:<name>")
        return ZOO[name](num_classes=num_classes, in_channels=sample_shape[0])
    spec = ModelSpec(source=name, args={"num_classes": num_classes}, input_shape=(1, *sample_shape),
                     in_channels=sample_shape[0])
    return build_model(spec, Path.cwd())


if __name__ == "__main__":
    sys.exit(main())
