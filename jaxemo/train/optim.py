"""Optimizers, learning-rate schedules and the trainable/frozen split of a parameter tree.

The split is of the tree itself (not a mask inside the optimizer), so gradients, optimizer state and buffer
donation exist only for what trains.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Path = tuple[str, ...]


def path_matcher(patterns: Sequence[str] | None) -> Callable[[Path], bool]:
    """Predicate on "a/b/c" parameter paths: True if any regex matches (all paths if `patterns` is None)."""
    if patterns is None:
        return lambda path: True
    compiled = [re.compile(p) for p in patterns]
    return lambda path: any(p.search("/".join(path)) for p in compiled)


def split_params(params: dict, is_trainable: Callable[[Path], bool]) -> tuple[dict, dict]:
    """params -> (trainable, frozen): two nested dicts whose union is `params`."""
    flat = traverse_util.flatten_dict(params)
    trainable = {k: v for k, v in flat.items() if is_trainable(k)}
    frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: dict, frozen: dict) -> dict:
    flat = {**traverse_util.flatten_dict(frozen), **traverse_util.flatten_dict(trainable)}
    return traverse_util.unflatten_dict(flat)


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def epoch_cosine_schedule(base_lr: float, steps_per_epoch: int, num_epochs: int, final_lr: float = 0.0):
    """torch `CosineAnnealingLR(T_max=num_epochs)` stepped once per epoch: constant inside an epoch."""

    def schedule(step):
        epoch = jnp.minimum(step // steps_per_epoch, num_epochs)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / num_epochs))
        return final_lr + (base_lr - final_lr) * cosine

    return schedule


def make_schedule(config, total_steps: int, steps_per_epoch: int):
    """`config.schedule` in {"constant", "warmup_cosine", "epoch_cosine"}."""
    lr = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "warmup_cosine":
        warmup = int(config.get("warmup_steps", 0))
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total_steps, warmup + 1), end_value=config.get("final_lr", 0.0)
        )
    if config.schedule == "epoch_cosine":
        return epoch_cosine_schedule(lr, steps_per_epoch, total_steps // steps_per_epoch,
                                     config.get("final_lr", 0.0))
    raise ValueError(f"optimizer.schedule={config.schedule!r}: expected constant, warmup_cosine or epoch_cosine")


def make_optimizer(config, total_steps: int, steps_per_epoch: int):
    """(optax transform, schedule) from `config.optimizer`: name in {adamw, adam, sgd}, clip_norm, ..."""
    schedule = make_schedule(config, total_steps, steps_per_epoch)
    if config.name == "adamw":
        opt = optax.adamw(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999),
                          eps=config.get("eps", 1e-8), weight_decay=config.get("weight_decay", 0.0))
    elif config.name == "adam":
        opt = optax.adam(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999), eps=config.get("eps", 1e-8))
    elif config.name == "sgd":
        opt = optax.sgd(schedule, momentum=config.get("momentum", 0.9) or None)
    else:
        raise ValueError(f"optimizer.name={config.name!r}: expected adamw, adam or sgd")
    clip = config.get("clip_norm")
    if clip:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt, schedule
