"""Throughput of modelzip's training loop against a plain hand-written PyTorch loop.

Same model (fashion_cnn, same initial weights), same Fashion-MNIST images, batch
size, optimizer (SGD, Nesterov momentum 0.9, cosine per step) and thread count;
one epoch each, interleaved over rounds so machine drift hits both alike.
The target: modelzip's loop reaches at least 90% of the plain loop's samples/s.

On a shared machine wall-clock rates swing with other people's load, so the
ratio is taken per round (the two runs of a round are back to back) and the
median of those is reported, next to the rate per CPU-second of this process,
which other processes barely disturb when torch uses one thread.

    PYTHONPATH=. .venv/bin/python scripts/bench_finetune.py --images 10000 --rounds 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from modelzip.finetuning import Augment, TrainSettings, auto_augment, fit
from modelzip.recipe import DataSpec
from modelzip.sources.data import DEFAULT_NORMALIZE, load_data
from modelzip.zoo import fashion_cnn

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--augment", action="store_true", help="also time modelzip with augment: auto")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    return parser.parse_args(argv)


def plain_loop(model, images, labels, batch_size: int, seed: int) -> None:
    """What one would write by hand: shuffled tensor slices, SGD, cosine per step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)
    steps = -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    model.train()
    for start in range(0, len(labels), batch_size):
        rows = order[start:start + batch_size]
        loss = F.cross_entropy(model(images[rows]), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    loss.item()  # wait for the last step, as fit() does


def modelzip_loop(model, bundle, batch_size: int, seed: int, augment: Augment) -> None:
    settings = TrainSettings(epochs=1, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                             schedule="cosine", batch_size=batch_size, seed=seed, augment=augment)
    fit(model, bundle, settings)


def timed(run, initial_state) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one epoch."""
    model = fashion_cnn()
    model.load_state_dict(initial_state)
    wall, cpu = time.perf_counter(), time.process_time()
    run(model)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = DataSpec(dataset="fashion-mnist", limit_train=args.images, val_samples=0)
    bundle = load_data(spec, base_dir=Path.cwd(), seed=0)  # val_samples 0: fit() skips validation
    images, labels = bundle.train.images[bundle.train.rows], bundle.train.labels[bundle.train.rows]
    torch.manual_seed(0)
    initial = fashion_cnn().state_dict()
    variants = {
        "plain": lambda m: plain_loop(m, images, labels, args.batch_size, seed=0),
        "modelzip": lambda m: modelzip_loop(m, bundle, args.batch_size, 0, Augment()),
    }
    if args.augment:
        crop_flip = auto_augment("fashion-mnist", DEFAULT_NORMALIZE["fashion-mnist"])
        variants["modelzip+augment"] = lambda m: modelzip_loop(m, bundle, args.batch_size, 0, crop_flip)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    timed(variants["plain"], initial)  # warm-up: allocator, kernels, page cache
    for round_ in range(args.rounds):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            seconds, cpu_seconds = timed(variants[name], initial)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    _print(len(labels), args, wall, cpu)
    if args.json:
        print(json.dumps(_figures(len(labels), args, wall)))
    return 0


def _figures(n: int, args, wall: dict[str, list[float]]) -> dict:
    """samples/s (median over rounds) and the median per-round ratio of modelzip to plain."""
    name = next(k for k in wall if k != "plain")
    paired = [p / m for p, m in zip(wall["plain"], wall[name])]
    return {"images": n, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "rounds": args.rounds, "plain_samples_per_s": n / statistics.median(wall["plain"]),
            "modelzip_samples_per_s": n / statistics.median(wall[name]), "ratio": statistics.median(paired)}


def _print(n: int, args, wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    print(f"fashion_cnn, {n} images, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
          f"{args.rounds} interleaved rounds; medians:")
    for name in wall:
        rounds = ", ".join(f"{n / s:.0f}" for s in wall[name])
        print(f"  {name:18s} {n / statistics.median(wall[name]):7.0f} samples/s wall "
              f"({rounds})   {n / statistics.median(cpu[name]):7.0f} samples/CPU-s")
    for name in wall:
        if name == "plain":
            continue
        paired = [p / m for p, m in zip(wall["plain"], wall[name])]  # rate ratio = inverse time ratio
        cpu_ratio = statistics.median(cpu["plain"]) / statistics.median(cpu[name])
        print(f"  ratio {name}/plain: {statistics.median(paired):.3f} wall (per round: "
              f"{', '.join(f'{r:.3f}' for r in paired)}), {cpu_ratio:.3f} per CPU-second")


if __name__ == "__main__":
    sys.exit(main())
