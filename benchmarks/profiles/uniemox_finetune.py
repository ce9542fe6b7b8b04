"""What UniEmoX's on-device augmentation costs in a fine-tuning step: the trainer's step of the `finetune-<ViT>`
benchmark case, alone in this process, with RandAugment, erasing and mixup/cutmix on, then each switched off.

    python -m benchmarks.profiles.uniemox_finetune                       # ViT-B/16, batch 8
    python -m benchmarks.profiles.uniemox_finetune --variant=tiny --batch=8
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from benchmarks.steps import make_case
from jaxemo.systems.base import CaseOptions
from jaxemo.systems import uniemox
from jaxemo.train import loop, sharding, state as state_lib

SETTINGS = (("everything on", dict(rand_augment=True, random_erasing=0.25, mixup=0.8, cutmix=1.0)),
            ("no RandAugment", dict(rand_augment=False, random_erasing=0.25, mixup=0.8, cutmix=1.0)),
            ("no augmentation after the crop", dict(rand_augment=False, random_erasing=0.0, mixup=0.0, cutmix=0.0)))


def seconds_per_step(case, steps: int, repeats: int) -> float:
    mesh = sharding.make_mesh({"data": -1})
    example = state_lib.example_batch_like(case.batch)
    setup = loop.setup_train_step(case.config, case.task, example, mesh, 100_000, 1_000)
    state, _ = state_lib.create_train_state(case.task, setup.tx, example, jax.random.key(0), mesh, setup.rules,
                                            setup.frozen_dtype)
    batch = sharding.shard_batch(case.batch, mesh)
    step = setup.train_step.lower(state, batch).compile()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiles.uniemox_finetune", description=__doc__)
    p.add_argument("--variant", default="B/16", help="the fine-tuned ViT (B/16, L/16) or tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    for label, augmentation in SETTINGS:
        case = make_case("uniemox", f"finetune-{args.variant}", args.batch, CaseOptions())
        case.config.finetune.update(augmentation)
        case.task = uniemox.build_task(case.config)
        print(f"finetune-{args.variant} batch {args.batch}, {label}: "
              f"{seconds_per_step(case, args.steps, args.repeats):.2f} s per step", flush=True)


if __name__ == "__main__":
    main()
