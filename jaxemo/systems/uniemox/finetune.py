"""UniEmoX fine-tuning for visual emotion recognition, as the reference's `main_finetune.py` (MAE's recipe).

The classifier is the student's encoder with MAE's fine-tuning head: the patch tokens are mean-pooled, then a
LayerNorm (`fc_norm`) and a linear layer (`vit.ViT(pool="gap", fc_norm=True)`); the encoder's final norm is
not used. Positions are learned from here on, starting from the pretraining's fixed sin-cos table (a random
start gets the same table, so the two starts differ only in the pretrained weights).

Training augmentation on the device: random resized crop (0.08-1) and flip, RandAugment (`rand-m9-mstd0.5-inc1`),
ImageNet normalisation, random erasing (p 0.25, per-pixel noise), then mixup 0.8 / cutmix 1.0 with label
smoothing 0.1 on the batch. Evaluation: the centre crop `crop_pct` (224/256) of the stored image, resized to
the model. The linear probe freezes the encoder and trains `fc_norm` and the head, without RandAugment,
erasing or mixing.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers, perf, vit
from jaxemo.convert import mae as mae_convert
from jaxemo.data import augment
from jaxemo.systems.base import Flops
from jaxemo.systems.uniemox.pretrain import IMAGENET_MEAN, IMAGENET_STD, SIZE_FIELDS, normalize
from jaxemo.train import tasks

LINEAR_PROBE_PATTERNS = ("^fc_norm/", "^head/")
ENCODER_KEYS = ("patch_embed", "cls_token", "encoder")


def build_classifier(config, num_classes: int, linear_probe: bool = False) -> vit.ViT:
    m, f = config.model, config.finetune
    sizes = {k: m[k] for k in SIZE_FIELDS if m.get(k) is not None}
    return vit.create(m.variant, image_size=(m.image_size, m.image_size), num_classes=num_classes, pool="gap",
                      fc_norm=True, pos_embedding="learned",
                      drop_path_rate=0.0 if linear_probe else f.drop_path_rate, scan_layers=m.scan_layers,
                      remat_policy=m.remat_policy, dtype=layers.dtype_from_name(m.dtype), **sizes)


def preprocess(rng, inputs: dict, train: bool, *, size: int, crop_pct: float, rand_augment: bool,
               erasing: float) -> dict:
    images = inputs["image"]
    if train:
        k_crop, k_flip, k_augment, k_erase = jax.random.split(rng, 4)
        x = augment.random_flip(k_flip, augment.random_resized_crop(k_crop, images, size))
        if rand_augment:
            x = augment.rand_augment(k_augment, x)
        x = normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)
        if erasing > 0:
            x = augment.random_erasing(k_erase, x, erasing)
        return {"image": x}
    height, width = images.shape[1:3]
    side_h, side_w = max(int(round(height * crop_pct)), 1), max(int(round(width * crop_pct)), 1)
    crop = jnp.array([(height - side_h) // 2, (width - side_w) // 2, side_h, side_w], jnp.int32)
    x = augment.crop_and_resize(images, crop, (size, size))
    return {"image": normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)}


def mixing(rng, inputs: list, labels, *, num_classes: int, mixup: float, cutmix: float, smoothing: float):
    images, targets, _ = augment.mixup_cutmix(rng, inputs[0], labels, num_classes, mixup, cutmix,
                                              label_smoothing=smoothing)
    return [images], targets


def build_task(config) -> tasks.ClassificationTask:
    """The fine-tuning (or, with `finetune.linear_probe`, linear-probe) task of `config.finetune` over
    `config.data.num_classes` classes."""
    f, num_classes = config.finetune, int(config.data.num_classes)
    probe = bool(f.linear_probe)
    model = build_classifier(config, num_classes, probe)
    mixes = not probe and (f.mixup > 0 or f.cutmix > 0)
    counts = flops(model, probe)
    return tasks.ClassificationTask(
        model, num_classes, label_smoothing=0.0 if probe else f.label_smoothing,
        trainable_patterns=LINEAR_PROBE_PATTERNS if probe else None,
        preprocess=functools.partial(preprocess, size=config.model.image_size, crop_pct=f.crop_pct,
                                     rand_augment=f.rand_augment and not probe,
                                     erasing=0.0 if probe else f.random_erasing),
        mixing=functools.partial(mixing, num_classes=num_classes, mixup=f.mixup, cutmix=f.cutmix,
                                 smoothing=f.label_smoothing) if mixes else None,
        top_k=(3,) if num_classes > 3 else (),
        flops_per_example=counts.train,
    )


def flops(model: vit.ViT, linear_probe: bool) -> Flops:
    """A fine-tuning example: 3x the classifier's forward; a linear probe's backward is its head's alone."""
    forward = perf.vit_forward_flops(model)
    head = 2 * model.width * model.num_classes
    return Flops(forward=forward, train=forward + 2 * head if linear_probe else perf.train_flops(forward))


def student_encoder(params: Mapping) -> Mapping:
    """The MAE encoder subtree of a pretraining run's params (`uniemox/student/encoder`) or of a converted MAE
    checkpoint (`encoder`)."""
    if "uniemox" in params:
        return params["uniemox"]["student"]["encoder"]
    if "student" in params and "encoder" in params["student"]:
        return params["student"]["encoder"]
    if "encoder" in params and "patch_embed" in params["encoder"]:
        return params["encoder"]
    raise KeyError(f"no MAE encoder in these params (top-level keys {sorted(params)}); expected a UniEmoX "
                   "pretraining checkpoint (uniemox/student/encoder) or an MAE one (encoder/)")


def with_sincos_positions(params: Mapping, model: vit.ViT) -> dict:
    """`params` with `pos_embed` set to the fixed sin-cos table the MAE encoder was pretrained with."""
    table = vit.sincos_pos_embed_2d(model.width, model.grid, model.num_prefix_tokens)
    return {**params, "pos_embed": np.asarray(table, np.asarray(params["pos_embed"]).dtype)}


def init_from_encoder(encoder: Mapping, model: vit.ViT):
    """`params -> params` for `loop.train_and_evaluate(init_params=)`: the classifier's patch embedding, CLS
    token and blocks from `encoder` (an MAE encoder subtree), sin-cos positions, a fresh `fc_norm` and head."""

    missing = [key for key in ENCODER_KEYS if key not in encoder]
    if missing:
        raise KeyError(f"the pretrained encoder has no {missing} (it has {sorted(encoder)})")

    def init(template):
        weights = {key: jax.tree.map(np.asarray, encoder[key]) for key in ENCODER_KEYS}
        return with_sincos_positions(mae_convert.merge_encoder(template, weights), model)

    return init


def init_random(model: vit.ViT):
    """`params -> params` for the from-scratch baseline: random weights, the same sin-cos starting positions."""
    return lambda template: with_sincos_positions(template, model)
