"""Optimizers, learning-rate schedules and the trainable/frozen split of a parameter tree.

The split is of the tree itself (not a mask inside the optimizer), so gradients, optimizer state and buffer
donation exist only for what trains.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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


SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "epoch_cosine")


def schedule_shape(config, total_steps: int, steps_per_epoch: int) -> Callable:
    """The learning-rate schedule divided by its peak `config.learning_rate`: a function of the update count
    that the (injected, per-run) peak multiplies. `config.schedule` in `SCHEDULES`:

        constant        1
        warmup_cosine   linear 0 -> 1 over `warmup_steps` (or `warmup_fraction` of the run, or `warmup_epochs`
                        epochs), then a half cosine to `final_lr` at the last step (MAE's per-iteration schedule)
        warmup_linear   linear 0 -> 1 over the warm-up, then linear to 0 at the last step (transformers'
                        `get_linear_schedule_with_warmup`)
        epoch_cosine    `epoch_cosine_schedule`: cosine over epochs, constant inside one
    """
    lr = float(config.learning_rate)
    final = float(config.get("final_lr", 0.0)) / lr if lr else 0.0
    fraction, epochs = config.get("warmup_fraction"), config.get("warmup_epochs")
    if fraction:
        warmup = int(round(fraction * total_steps))
    elif epochs:
        warmup = int(round(epochs * steps_per_epoch))
    else:
        warmup = int(config.get("warmup_steps", 0))
    if config.schedule == "constant":
        return optax.constant_schedule(1.0)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1), end_value=final)
    if config.schedule == "warmup_linear":
        return optax.join_schedules([optax.linear_schedule(0.0, 1.0, max(warmup, 1)),
                                     optax.linear_schedule(1.0, 0.0, max(total_steps - warmup, 1))], [warmup])
    if config.schedule == "epoch_cosine":
        return epoch_cosine_schedule(1.0, steps_per_epoch, max(total_steps // steps_per_epoch, 1), final)
    raise ValueError(f"optimizer.schedule={config.schedule!r}: expected one of {', '.join(SCHEDULES)}")


def make_schedule(config, total_steps: int, steps_per_epoch: int) -> Callable:
    """The learning rate at each update count: `config.learning_rate` times `schedule_shape`."""
    shape = schedule_shape(config, total_steps, steps_per_epoch)
    return lambda step: config.learning_rate * shape(step)


def _key_name(key) -> str:
    """One entry of a jax tree path as a name: a dict key, a sequence index, else the entry's own str."""
    if isinstance(key, (jax.tree_util.DictKey, jax.tree_util.FlattenedIndexKey)):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    return str(key)


def _path_name(path) -> str:
    return "/".join(_key_name(k) for k in path)


def layer_decay_factor(name: str, leaf, decay: float, depth: int) -> jax.Array | float:
    """The learning-rate factor of one parameter under layer-wise decay (BEiT / MAE fine-tuning): layer id 0 for
    the embeddings (`cls_token`, `pos_embed`, `patch_embed`, prompts), i + 1 for block i, depth + 1 for the
    rest (final norm, head); factor = decay ** (depth + 1 - id). A scanned stack (`.../layers/...`, blocks on
    the leading axis) gets one factor per block, broadcast over the block's dims."""
    if re.search(r"(^|/)layers/", name):
        ids = 1 + np.arange(np.shape(leaf)[0])
        return jnp.asarray(decay ** (depth + 1 - ids), jnp.float32).reshape((-1,) + (1,) * (np.ndim(leaf) - 1))
    match = re.search(r"(^|/)layers_(\d+)/", name)
    if match:
        return decay ** (depth - int(match.group(2)))
    if re.search(r"(^|/)(cls_token|pos_embed|patch_embed|prompts|norm_pre)($|/)", name):
        return decay ** (depth + 1)
    return 1.0


def scale_by_layer_decay(decay: float, depth: int) -> optax.GradientTransformation:
    """Scales each update by `layer_decay_factor` (placed before the learning rate, so it scales AdamW's decay
    term too, as torch's per-group `lr_scale` does)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * layer_decay_factor(_path_name(path), u, decay, depth), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decay_mask(exclude: Sequence[str] | None) -> Callable | None:
    """AdamW's weight-decay mask: every parameter except those whose path matches a regex in `exclude`
    (e.g. `("bias$", "scale$")`: no decay on biases and norms, as timm's `add_weight_decay`)."""
    if not exclude:
        return None
    matches = path_matcher(exclude)

    def mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: not matches(_path_name(path).split("/")), params)

    return mask


INJECTED = ("learning_rate", "weight_decay")  # hyperparameters that live in the optimizer state


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transform whose peak learning rate (and AdamW's weight decay) are *injected*: they live in the
    optimizer state (`optax.inject_hyperparams`), so runs that differ only in them (a population's trials)
    share one compiled step; `shape` is the schedule over the update count, the same for all of them."""

    tx: optax.GradientTransformation
    shape: Callable
    learning_rate: float

    def schedule(self, step):
        """The learning rate at update `step` for the configured peak."""
        return self.learning_rate * self.shape(step)

    def current_learning_rate(self, opt_state) -> jax.Array:
        """The learning rate the next update will use: the state's own peak times the schedule at its count."""
        return opt_state.hyperparams["learning_rate"] * self.shape(opt_state.count)

    def init(self, params, **hyperparams):
        """`tx.init(params)` with injected hyperparameters (e.g. `learning_rate=`) replaced."""
        return with_hyperparams(self.tx.init(params), **hyperparams)


def with_hyperparams(opt_state, **hyperparams):
    """A copy of an injected optimizer state with some hyperparameters (names in `INJECTED`) replaced."""
    unknown = sorted(set(hyperparams) - set(opt_state.hyperparams))
    if unknown:
        raise ValueError(f"hyperparameters {unknown} are not injected into this optimizer; it has "
                         f"{sorted(opt_state.hyperparams)}")
    replaced = dict(opt_state.hyperparams)
    for name, value in hyperparams.items():
        replaced[name] = jnp.asarray(value, replaced[name].dtype)
    return opt_state._replace(hyperparams=replaced)


def make_optimizer(config, total_steps: int, steps_per_epoch: int) -> Optimizer:
    """`Optimizer` from `config.optimizer`: name in {adamw, adam, sgd}, learning_rate, schedule, clip_norm,
    grad_scale (the gradients are multiplied by it before clipping), ...
    Adam with `weight_decay` > 0 is torch's Adam: the decay is an L2 term in the gradient, before the moments.
    AdamW also takes `decay_exclude` (regexes of parameters without weight decay, `decay_mask`) and
    `layer_decay` with `layer_decay_depth` (layer-wise learning-rate decay over a ViT, `layer_decay_factor`).

    This is the one optimizer factory: the trainer, test-time adaptation and population training all call it.
    """
    shape = schedule_shape(config, total_steps, steps_per_epoch)
    clip = config.get("clip_norm")
    grad_scale = float(config.get("grad_scale") or 1.0)  # gradients times this before clipping (default 1)
    b1, b2, eps = config.get("b1", 0.9), config.get("b2", 0.999), config.get("eps", 1e-8)

    def clipped(opt):
        before = ([optax.scale(grad_scale)] if grad_scale != 1.0 else []) + (
            [optax.clip_by_global_norm(clip)] if clip else [])
        return optax.chain(*before, opt) if before else opt

    def scheduled(learning_rate):
        return lambda count: learning_rate * shape(count)

    hyperparams = {"learning_rate": float(config.learning_rate)}
    if config.name == "adamw":
        hyperparams["weight_decay"] = float(config.get("weight_decay", 0.0))

        mask = decay_mask(config.get("decay_exclude"))
        layer_decay = config.get("layer_decay")

        def build(learning_rate, weight_decay):
            parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.add_decayed_weights(weight_decay, mask)]
            if layer_decay:
                parts.append(scale_by_layer_decay(float(layer_decay), int(config.layer_decay_depth)))
            parts.append(optax.scale_by_learning_rate(scheduled(learning_rate)))
            return clipped(optax.chain(*parts))
    elif config.name == "adam" and config.get("weight_decay"):
        # torch `Adam(weight_decay=wd)`: L2 added to the gradient before the moments (coupled, unlike AdamW).
        hyperparams["weight_decay"] = float(config.weight_decay)

        def build(learning_rate, weight_decay):
            return clipped(optax.chain(optax.add_decayed_weights(weight_decay),
                                       optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                                       optax.scale_by_learning_rate(scheduled(learning_rate))))
    elif config.name == "adam":
        def build(learning_rate):
            return clipped(optax.adam(scheduled(learning_rate), b1=b1, b2=b2, eps=eps))
    elif config.name == "sgd":
        momentum = config.get("momentum", 0.9) or None

        def build(learning_rate):
            return clipped(optax.sgd(scheduled(learning_rate), momentum=momentum))
    else:
        raise ValueError(f"optimizer.name={config.name!r}: expected adamw, adam or sgd")
    tx = optax.inject_hyperparams(build, hyperparam_dtype=jnp.float32)(**hyperparams)
    return Optimizer(tx, shape, float(config.learning_rate))
