"""The MER classification task (cross-entropy over six classes) and the analytic FLOP count of its models.

`MerTask` is `jaxemo.train.tasks.ClassificationTask` over a model of `jaxemo.models.agt`; a batch holds
`features/<name>` per feature and, for frame-level features, `lengths/<name>` (masks are made on the device). Its evaluation adds per-class recall
to the classification metrics (accuracy, weighted F1: the MER-SEMI score, macro F1, UAR). The loss is the mean
softmax cross-entropy, as MERTools' (log-softmax + NLL summed, divided by the batch size).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxemo.data.builders.mer2024 import CLASSES
from jaxemo.models import agt as agt_model
from jaxemo.systems.base import Flops
from jaxemo.train import tasks



@dataclasses.dataclass(frozen=True)
class MerTask(tasks.ClassificationTask):
    num_classes: int = len(CLASSES)
    input_keys: tuple = ("features",)
    class_names: tuple = CLASSES
    modality_dropout: float = 0.0  # in training, the probability that a sample loses one of its features

    def inputs(self, batch, rng=None, train: bool = False) -> list:
        features = {k.split("/", 1)[1]: batch[k].astype(jnp.float32) for k in self.input_keys
                    if k.startswith("features/")}
        if train and self.modality_dropout > 0:
            features = self._drop_one_modality(features, rng)
        masks = {k.split("/", 1)[1]: None for k in self.input_keys if k.startswith("lengths/")}
        masks = {k: agt_model.lengths_to_mask(batch[f"lengths/{k}"], features[k].shape[1]) for k in masks}
        return [features, masks or None]

    def _drop_one_modality(self, features: dict, rng) -> dict:
        """Each sample, with probability `modality_dropout`, loses one of its features (uniformly chosen; zeros,
        as `jaxemo.train.robustness` makes a modality absent; frame lengths kept)."""
        names = list(features)
        batch_size = features[names[0]].shape[0]
        drop_key, which_key = jax.random.split(jax.random.fold_in(rng, 0x6D6F64))
        dropped = jax.random.uniform(drop_key, (batch_size,)) < self.modality_dropout
        which = jax.random.randint(which_key, (batch_size,), 0, len(names))
        out = {}
        for i, name in enumerate(names):
            keep = ~(dropped & (which == i))
            out[name] = features[name] * keep.reshape((-1,) + (1,) * (features[name].ndim - 1))
        return out

    def summarize(self, stats) -> dict:
        metrics = super().summarize(stats)
        confusion = np.asarray(stats["confusion"], np.float64)
        support = confusion.sum(1)
        recall = np.divide(np.diag(confusion), support, out=np.zeros_like(support), where=support > 0)
        metrics.update({f"recall/{name}": float(r) for name, r in zip(self.class_names, recall)})
        return metrics


AGT_FIELDS = ("guide", "width", "depth", "self_depth", "num_heads", "mlp_ratio", "dropout", "attention_dropout",
              "input_dropout", "utt_tokens", "frame_positions", "gate", "fuse")


def build_model(model_config) -> agt_model.MERToolsAttention | agt_model.AudioGuidedTransformer:
    """The model named by `model_config.name` ("attention" | "agt", the default) from a ConfigDict or a dict.
    Keys: `modalities` (feature names, required), `num_classes` (6); for "attention" `hidden_dim` (128),
    `dropout` (0.3), `lstm_front_padding` (False); for "agt" the fields of `AudioGuidedTransformer` (`roles`
    may be a mapping). A key set to None takes its default; other keys (`search`) are the recipe's."""
    def get(key, default=None):
        value = model_config.get(key)
        return default if value is None else value

    modalities = tuple(get("modalities", ()))
    if not modalities:
        raise ValueError("config.modalities must name the input features")
    name = get("name", "agt")
    num_classes = int(get("num_classes", agt_model.NUM_CLASSES))
    if name == "attention":
        return agt_model.create(name, modalities=modalities, hidden_dim=int(get("hidden_dim", 128)),
                                dropout=float(get("dropout", 0.3)), num_classes=num_classes,
                                lstm_front_padding=bool(get("lstm_front_padding", False)))
    roles = get("roles")
    fields = {f: get(f) for f in AGT_FIELDS if get(f) is not None}
    return agt_model.create(name, modalities=modalities, num_classes=num_classes,
                            roles=tuple(sorted(dict(roles).items())) if roles else None, **fields)


def trial_config(config, model_config, frame_features: Sequence[str] = (), feature_dims: Mapping | None = None):
    """A copy of the recipe (or round) `config` for one model's trials: `model` (its config, naming the features
    in `modalities`), `frame_features` (the features with `lengths/<name>`, frame level) and `feature_dims`
    ({feature: (tokens, dim)}, tokens 0 for an utterance vector; for the FLOP count)."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.model = model_config
        out.frame_features = tuple(frame_features)
        out.feature_dims = {k: tuple(int(x) for x in v) for k, v in dict(feature_dims or {}).items()}
    return out


def build_task(config) -> MerTask:
    """The task of a trial config (`trial_config`): the model of `config.model` (`build_model`)
    reading `features/<name>` per feature and `lengths/<name>` for `config.frame_features`; with
    `config.feature_dims`, its analytic FLOPs per training example; `config.augment.modality_dropout` (absent: 0)
    drops a training sample's feature with that probability."""
    model = build_model(config.model)
    frame_features = tuple(config.get("frame_features") or ())
    keys = tuple(f"features/{n}" for n in model.modalities)
    keys += tuple(f"lengths/{n}" for n in model.modalities if n in frame_features)
    counts = flops(config)
    augment = config.get("augment")
    return MerTask(model=model, input_keys=keys, flops_per_example=counts.train if counts else None,
                   modality_dropout=float(augment.get("modality_dropout") or 0.0) if augment else 0.0)


def flops(config) -> Flops | None:
    """Per-example FLOPs of the trial config's model where `config.feature_dims` is known (the data is read)."""
    dims = config.get("feature_dims")
    if not dims:
        return None
    forward = forward_flops(build_model(config.model), dims)
    return Flops(forward=forward, train=3 * forward)


def forward_flops(model, dims: Mapping) -> int:
    """Multiply-add FLOPs (2 per MAC) of one example's forward pass: the matmuls (dense layers, the LSTM's
    gates, attention scores and values); `dims` {feature: (tokens, dim)}, tokens 0 for an utterance vector."""
    flops = 0
    if isinstance(model, agt_model.MERToolsAttention):
        h = model.hidden_dim
        for name in model.modalities:
            steps, d = dims[name]
            if steps:  # LSTM: input and recurrent gates each step, then linear_1
                flops += 2 * steps * (d * 4 * h + h * 4 * h) + 2 * h * h
            else:
                flops += 2 * (d * h + 2 * h * h)
        n = len(model.modalities)
        flops += 2 * (n * h * h + 2 * h * h) + 2 * h * n + 2 * h * n + 2 * h * model.num_classes
        return int(flops)
    if isinstance(model, agt_model.AudioGuidedTransformer):
        w, mlp = model.width, model.mlp_ratio * model.width
        tokens = {}
        for name in model.modalities:
            steps, d = dims[name]
            tokens[name] = steps or model.utt_tokens
            flops += 2 * (steps or 1) * d * (w if steps else model.utt_tokens * w)
        block = lambda tq, tk: 2 * tq * w * w * 2 + 2 * tk * w * w * 2 + 2 * 2 * tq * tk * w + 2 * 2 * tq * w * mlp
        for name in model.modalities:
            flops += model.self_depth * block(tokens[name], tokens[name])
        guide = model.guide_name()
        for name in model.modalities:
            if name != guide:
                flops += model.depth * block(tokens[guide], tokens[name])
        streams = len(model.stream_names())
        flops += 2 * streams * w * streams + 2 * streams * w + 2 * w * model.num_classes
        return int(flops)
    raise TypeError(f"no FLOP count for {type(model).__name__}")
