"""UniEmoX pretraining: the student and teacher from a config, the two views, the task, and the synthetic teacher.

Per step, on the device (`PretrainTask.views`), from each stored image, its person box and `has_person`:
  scene    a random resized crop (scale `crop_scale`, 0.2-1 as the reference) and a horizontal flip;
  person   the crop of the person box, flipped at random; where the element has no person, a second random
           resized crop of the whole image (what the released code computes for every image; the fallback
           rate is logged as `person_fallback`);
both normalised with ImageNet's mean and std for the student. The teacher sees the same scene crop normalised
with CLIP's mean and std (`teacher_input="clip"`); `teacher_input="reference"` feeds it the ImageNet-normalised
crop, as the released code does. Crops are bilinear (the reference's are bicubic). Each element's prompt
embedding (`text_feature`, computed once by `prompts.text_features`) is looked up on the host.

Without a pretrained CLIP (the default synthetic run), `ClipContrastiveTask` first trains a small CLIP on the
images and their prompts, so that the distilled targets carry what the text says, as OpenAI's CLIP does for
EmoSet.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxemo import layers, perf, vit
from jaxemo.convert import mae as mae_convert
from jaxemo.data import augment, text as text_lib
from jaxemo.models import clip, mae, uniemox
from jaxemo.systems.uniemox import prompts as prompts_lib
from jaxemo.train import checkpoint
from jaxemo.train import tasks

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TEACHER_INPUTS = ("clip", "reference")
SIZE_FIELDS = ("width", "depth", "num_heads", "mlp_dim")


def normalize(images01: jax.Array, mean, std) -> jax.Array:
    return (images01 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ------------------------------------------------------------------------------------------------ models


def build_student(config) -> uniemox.UniEmoX:
    """The MAE student of `config.model` (a ViT variant, sizes overridable) inside `UniEmoX`."""
    m = config.model
    sizes = {k: m[k] for k in (*SIZE_FIELDS, "decoder_width", "decoder_depth", "decoder_heads",
                                "decoder_mlp_dim") if m.get(k) is not None}
    student = mae.create(m.variant, image_size=(m.image_size, m.image_size), mask_ratio=m.mask_ratio,
                         norm_pix_loss=m.norm_pix_loss, decoder_slice=m.decoder_slice, scan_layers=m.scan_layers,
                         remat_policy=m.remat_policy, dtype=layers.dtype_from_name(m.dtype), **sizes)
    return uniemox.create(student=student, fusion=m.fusion, dtype=layers.dtype_from_name(m.dtype))


def build_teacher(config) -> clip.CLIP:
    """The CLIP of `config.teacher` at the student's image size; the text tower's vocabulary and end-of-text id
    are the tokenizer's where the run set them (`teacher.vocab_size`, `teacher.eot_token_id`; OpenAI's 49408 /
    49407 otherwise)."""
    t = config.teacher
    overrides = {k: t[k] for k in ("vision_width", "vision_depth", "vision_heads", "vision_mlp_dim", "embed_dim",
                                   "text_width", "text_depth", "text_heads", "text_mlp_dim", "context_length",
                                   "vocab_size", "eot_token_id")
                 if t.get(k) is not None}
    teacher = clip.create(t.variant, image_size=config.model.image_size, scan_layers=config.model.scan_layers,
                          dtype=layers.dtype_from_name(t.dtype), **overrides)
    width = build_student(config).student.decoder_width
    if teacher.embed_dim != width:
        raise ValueError(f"the student's projected CLS ({width}, model.decoder_width) must match the teacher's "
                         f"embedding width ({teacher.embed_dim}, teacher.embed_dim)")
    return teacher


def build_pretrainer(config) -> uniemox.Pretrainer:
    return uniemox.Pretrainer(build_student(config), build_teacher(config))


def with_tokenizer(config, tokenizer):
    """`config` with the teacher's vocabulary and end-of-text id of `tokenizer` (`jaxemo.data.text.ClipTokenizer`)."""
    config.teacher.vocab_size = tokenizer.tokenizer.get_vocab_size()
    config.teacher.eot_token_id = tokenizer.end_id
    return config


def build_task(config) -> "PretrainTask":
    """The pretraining task of a `pretrain` stage config; the prompt-feature table (`PromptFeatures`, from the
    run's teacher) is the run's: `dataclasses.replace(task, host=...)`."""
    model = build_pretrainer(config)
    return PretrainTask(model, weights=uniemox.LossWeights(**config.loss_weights), teacher_input=config.teacher.input,
                        crop_scale=tuple(config.data.crop_scale), flops_per_example=flops(model)["train"])


def teacher_image_params(clip_params: Mapping) -> dict:
    """The part of a full CLIP parameter tree the pretrainer's `teacher/` holds (the image tower)."""
    missing = [k for k in ("visual", "visual_projection", "logit_scale") if k not in clip_params]
    if missing:
        raise KeyError(f"the CLIP parameters lack {missing}; they have {sorted(clip_params)}")
    return {k: clip_params[k] for k in ("visual", "visual_projection", "logit_scale")}


def load_teacher(config):
    """(CLIP model, its full params, tokenizer, cache id) from `teacher.checkpoint` (a jaxemo checkpoint, as
    `python -m jaxemo.convert clip|clip_hf` writes it) and `teacher.tokenizer` (CLIP's tokenizer.json)."""
    t = config.teacher
    if not t.tokenizer:
        raise ValueError("teacher.checkpoint needs teacher.tokenizer (the CLIP tokenizer.json)")
    tokenizer = text_lib.ClipTokenizer(t.tokenizer, t.context_length)
    model = build_teacher(with_tokenizer(config.copy_and_resolve_references(), tokenizer))
    params = checkpoint.load_params(t.checkpoint)
    teacher_image_params(params)  # fails early, naming what is missing
    return model, params, tokenizer, os.path.abspath(t.checkpoint)


def init_params(config, teacher_params):
    """`params -> params` for the pretraining run: the teacher's image tower from `teacher_params` (a full CLIP
    tree) and the student's start, shapes checked against the model's: with `pretrained.mae`, every part of
    that MAE checkpoint (an encoder-only one keeps the initialised decoder; the fusion starts from its
    initialisation); with `pretrained.uemo`, a converted u-emo pretraining checkpoint (`python -m
    jaxemo.convert uemo`): the student, its decoder and the fusion, to continue a run of the released code."""
    mae_path, uemo_path = config.pretrained.mae, config.pretrained.uemo
    if mae_path and uemo_path:
        raise ValueError(f"pretrained.mae={mae_path!r} and pretrained.uemo={uemo_path!r}: give one start")
    mae_params = checkpoint.load_params(mae_path) if mae_path else None
    if mae_params is not None:
        logging.info("student starts from %s (%s)", mae_path, ", ".join(sorted(mae_params)))
        if "decoder" not in mae_params:
            logging.info("the MAE checkpoint has no decoder: the decoder starts from random weights")
    uemo_params = uemo_start(checkpoint.load_params(uemo_path), config.model.fusion, uemo_path) if uemo_path \
        else None

    def init(template):
        out = dict(template)
        out["teacher"] = teacher_image_params(teacher_params)
        if mae_params is not None:
            student = mae_convert.merge_encoder(template["uniemox"]["student"], jax.device_get(mae_params))
            out["uniemox"] = {**template["uniemox"], "student": student}
        if uemo_params is not None:
            out["uniemox"] = mae_convert.merge_encoder(template["uniemox"], jax.device_get(uemo_params))
        return out

    return init


def uemo_start(params: Mapping, fusion: str, path: str = "") -> dict:
    """The parts of a converted u-emo checkpoint (`student`, `fuse`) the student of `model.fusion` takes: the
    student always (decoder included); the fusion for "easyfusion" (a checkpoint without one leaves it at its
    initialisation), not for "none"."""
    unknown = sorted(set(params) - {"student", "fuse"})
    if "student" not in params or unknown:
        raise ValueError(f"{path}: not a converted u-emo checkpoint (parts {sorted(params)}; expected student and "
                         f"fuse, as `python -m jaxemo.convert uemo` writes)")
    if "decoder" not in params["student"]:
        raise ValueError(f"{path}: the u-emo student has no decoder")
    out = {"student": params["student"]}
    if fusion == "none":
        if "fuse" in params:
            logging.info("model.fusion=none: the u-emo checkpoint's fusion weights are not used")
    elif "fuse" in params:
        out["fuse"] = params["fuse"]
    else:
        logging.info("the u-emo checkpoint has no fusion: the fusion starts from its initialisation")
    logging.info("student%s start from the u-emo checkpoint %s", " and fusion" if "fuse" in out else "", path)
    return out


# ------------------------------------------------------------------------------------------------ views


def box_crop(box: jax.Array, height: int, width: int) -> jax.Array:
    """Normalised xyxy -> (top, left, h, w) int32 pixels covering the box (at least one pixel)."""
    top = jnp.clip(jnp.floor(box[1] * height), 0, height - 1).astype(jnp.int32)
    left = jnp.clip(jnp.floor(box[0] * width), 0, width - 1).astype(jnp.int32)
    bottom = jnp.clip(jnp.ceil(box[3] * height), 1, height).astype(jnp.int32)
    right = jnp.clip(jnp.ceil(box[2] * width), 1, width).astype(jnp.int32)
    return jnp.stack([top, left, jnp.maximum(bottom - top, 1), jnp.maximum(right - left, 1)])


def two_views(rng, images, person_boxes, has_person, size: int, crop_scale=(0.2, 1.0), train: bool = True):
    """(scene, person) in [0, 1], `[B, size, size, 3]` each. Evaluation (`rng` None) takes the whole image as
    the scene and the box (or the whole image) as the person view, unflipped."""
    height, width = images.shape[1:3]
    whole = jnp.array([0, 0, height, width], jnp.int32)
    boxes = jax.vmap(lambda b: box_crop(b, height, width))(person_boxes)
    if train:
        k_scene, k_person, k_flip_scene, k_flip_person = jax.random.split(rng, 4)
        scene_crops = jax.vmap(lambda k: augment.sample_crop(k, height, width, crop_scale))(
            jax.random.split(k_scene, images.shape[0]))
        second = jax.vmap(lambda k: augment.sample_crop(k, height, width, crop_scale))(
            jax.random.split(k_person, images.shape[0]))
    else:
        scene_crops = jnp.broadcast_to(whole, (images.shape[0], 4))
        second = scene_crops
    person_crops = jnp.where(has_person[:, None], boxes, second)
    crop = jax.vmap(lambda x, c: augment.crop_and_resize(x, c, (size, size)))
    scene, person = crop(images, scene_crops) / 255.0, crop(images, person_crops) / 255.0
    if train:
        scene = augment.random_flip(k_flip_scene, scene)
        person = augment.random_flip(k_flip_person, person)
    return scene, person


# ------------------------------------------------------------------------------------------------ host


@dataclasses.dataclass(frozen=True)
class PromptFeatures:
    """Host transform: each element's cached prompt embedding (`text_feature`) and its person box, from the
    prompts `prompts.example_prompt` builds. `rows` maps a prompt to its row of `table` (picklable)."""

    rows: Mapping[str, int]
    table: np.ndarray
    class_names: tuple
    objects: str = "names"  # prompts.OBJECT_LISTS

    def __call__(self, example: dict, rng=None) -> dict:
        prompt = prompts_lib.example_prompt(example, self.class_names, self.objects)
        row = self.rows.get(prompt)
        if row is None:
            raise KeyError(f"element {prompts_lib.as_text(example.get('id', '?'))!r}: its prompt has no cached text "
                           f"feature (the features were computed for another dataset): {prompt[:120]!r}")
        return {"image": np.asarray(example["image"]), "person_box": np.asarray(example["person_box"], np.float32),
                "has_person": np.bool_(example["has_person"]), "text_feature": self.table[row]}


def prompt_table(sources: Sequence, class_names: Sequence[str],
                 objects: str = "names") -> tuple[list[str], int, int]:
    """(distinct prompts of every element of `sources`, elements, elements without a person box): one pass."""
    seen, count, fallback = {}, 0, 0
    for source in sources:
        for i in range(len(source)):
            example = source[i]
            seen.setdefault(prompts_lib.example_prompt(example, class_names, objects), None)
            count += 1
            fallback += not bool(example["has_person"])
    return list(seen), count, fallback


# ------------------------------------------------------------------------------------------------ task


@dataclasses.dataclass(frozen=True)
class PretrainTask:
    """The UniEmoX objective as a `tasks.Task`: `uniemox/` trains, `teacher/` is frozen. Evaluation masks with
    a fixed key, so that a validation set gives comparable losses from one evaluation to the next."""

    model: uniemox.Pretrainer
    host: Optional[Callable] = None
    weights: uniemox.LossWeights = uniemox.LossWeights()
    teacher_input: str = "clip"
    crop_scale: tuple = (0.2, 1.0)
    flops_per_example: Optional[int] = None
    pad_spec: Optional[Mapping[str, int]] = None
    input_keys: tuple = ("image", "person_box", "has_person", "text_feature")

    def __post_init__(self):
        if self.teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"teacher_input={self.teacher_input!r}: expected one of {TEACHER_INPUTS}")

    @property
    def image_size(self) -> int:
        return self.model.uniemox.student.image_size[0]

    def is_trainable(self, path) -> bool:
        return path[0] != "teacher"

    def host_transform(self, train: bool) -> tasks.HostTransform:
        return tasks.HostTransform(self.host, self.input_keys)

    def views(self, rng, batch, train: bool):
        """(student scene, student person, teacher scene), normalised for each network."""
        scene, person = two_views(rng, batch["image"], batch["person_box"], batch["has_person"], self.image_size,
                                  self.crop_scale, train)
        student_scene = normalize(scene, IMAGENET_MEAN, IMAGENET_STD)
        teacher_scene = normalize(scene, CLIP_MEAN, CLIP_STD) if self.teacher_input == "clip" else student_scene
        return student_scene, normalize(person, IMAGENET_MEAN, IMAGENET_STD), teacher_scene

    def init(self, rng, batch):
        params_rng, dropout_rng, masking_rng = jax.random.split(rng, 3)
        return self.model.init({"params": params_rng, "dropout": dropout_rng, "masking": masking_rng},
                               *self.views(None, batch, train=False))

    def losses(self, params, batch, rng, train: bool) -> dict:
        view_rng, masking_rng, dropout_rng = jax.random.split(rng, 3)
        views = self.views(view_rng if train else None, batch, train)
        _, aux = self.model.apply({"params": params}, *views, deterministic=not train,
                                  rngs={"masking": masking_rng, "dropout": dropout_rng})
        valid = batch.get("mask", jnp.ones(batch["has_person"].shape, bool)).astype(jnp.float32)
        student = self.model.uniemox.student
        reconstruction = mae.reconstruction_loss(views[0], aux["pred"], aux["mask"] * valid[:, None],
                                                 student.patch_size, student.norm_pix_loss)
        return uniemox.pretraining_losses(reconstruction, aux["fused"], aux["clip_image"], batch["text_feature"],
                                          aux["logit_scale"], self.weights, valid)

    def loss(self, params, batch, rng, train=True):
        losses = self.losses(params, batch, rng, train)
        fallback = 1.0 - batch["has_person"].astype(jnp.float32).mean()
        return losses["total"], {**{k: v for k, v in losses.items() if k != "total"}, "person_fallback": fallback}

    def eval_stats(self, params, batch):
        losses = self.losses(params, batch, jax.random.key(0), train=False)
        count = batch.get("mask", jnp.ones(batch["has_person"].shape, bool)).astype(jnp.float32).sum()
        return {**{f"{k}_sum": v * count for k, v in losses.items()}, "count": count}

    def summarize(self, stats) -> dict:
        count = max(float(stats["count"]), 1.0)
        metrics = {k[:-4]: float(v) / count for k, v in stats.items() if k.endswith("_sum")}
        return {"loss": metrics.pop("total"), **metrics}


# ------------------------------------------------------------------------------------------------ teacher


@dataclasses.dataclass(frozen=True)
class PromptTokens:
    """Host transform for `ClipContrastiveTask`: the image and its prompt's token ids."""

    tokenizer: Any
    class_names: tuple
    objects: str = "names"  # prompts.OBJECT_LISTS

    def __call__(self, example: dict, rng=None) -> dict:
        ids = self.tokenizer([prompts_lib.example_prompt(example, self.class_names, self.objects)])[0]
        return {"image": np.asarray(example["image"]), "token_ids": ids}


@dataclasses.dataclass(frozen=True)
class ClipContrastiveTask:
    """CLIP's symmetric InfoNCE on (image, prompt) pairs, to train a teacher where no pretrained CLIP is at hand.
    Images are random resized crops (scale 0.5-1) in training, whole in evaluation, CLIP-normalised.
    Evaluation: image-to-text top-1 over the batch, a hit when the chosen prompt equals the image's own."""

    model: clip.CLIP
    host: Optional[Callable] = None
    flops_per_example: Optional[int] = None
    pad_spec: Optional[Mapping[str, int]] = None
    input_keys: tuple = ("image", "token_ids")

    def is_trainable(self, path) -> bool:
        return True

    def host_transform(self, train: bool) -> tasks.HostTransform:
        return tasks.HostTransform(self.host, self.input_keys)

    def images(self, rng, images):
        size = self.model.image_size
        if rng is None:
            x = augment.resize(images, size)
        else:
            x = augment.random_flip(jax.random.fold_in(rng, 1),
                                    augment.random_resized_crop(rng, images, size, scale=(0.5, 1.0)))
        return normalize(x / 255.0, CLIP_MEAN, CLIP_STD)

    def init(self, rng, batch):
        return self.model.init(rng, self.images(None, batch["image"]), batch["token_ids"])

    def logits(self, params, batch, rng=None):
        logits, _ = self.model.apply({"params": params}, self.images(rng, batch["image"]), batch["token_ids"])
        return logits.astype(jnp.float32)

    def loss(self, params, batch, rng, train=True):
        logits = self.logits(params, batch, rng if train else None)
        labels = jnp.arange(logits.shape[0])
        loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
        return loss, {"retrieval": self._hits(logits, batch["token_ids"]).mean()}

    @staticmethod
    def _hits(logits, ids, valid=None):
        if valid is not None:
            logits = jnp.where(valid[None, :], logits, -jnp.inf)
        chosen = ids[jnp.argmax(logits, axis=-1)]
        return jnp.all(chosen == ids, axis=-1).astype(jnp.float32)

    def eval_stats(self, params, batch):
        valid = batch.get("mask", jnp.ones(batch["token_ids"].shape[:1], bool))
        logits = self.logits(params, batch)
        hits = self._hits(logits, batch["token_ids"], valid) * valid
        return {"hits": hits.sum(), "count": valid.astype(jnp.float32).sum()}

    def summarize(self, stats) -> dict:
        return {"retrieval": float(stats["hits"]) / max(float(stats["count"]), 1.0)}


# ------------------------------------------------------------------------------------------------ FLOPs


def flops(model: uniemox.Pretrainer) -> dict:
    """Matmul FLOPs of one pretraining image: `{"forward", "train"}` (`jaxemo.perf` conventions).

    Student (N patches of P x P x C, width D, MLP M, depth L, K = int(N (1 - ratio)) visible; decoder width Dd,
    depth Ld, MLP Md): per view a patch embedding of all N patches (2 N P^2 C D, as the gather follows it) and
    L layers on 1 + K tokens; the scene's decoder (embed 2 (1 + K) D Dd, Ld layers on 1 + N tokens, prediction
    2 (1 + N) Dd P^2 C); the person's CLS embed 2 D Dd; the fusion 2 Dd^2. Teacher: its ViT forward and the
    projection 2 Dv E. Training: 3x the student (everything in it trains) + 1x the teacher (no gradient).
    """
    student = model.uniemox.student
    (ph, pw), d, c = student.patch_size, student.width, student.in_channels
    n = student.num_patches
    keep = mae.num_visible(n, student.mask_ratio)
    dense, attention = perf.transformer_layer_flops(1 + keep, d, student.mlp_dim)
    view = 2 * n * ph * pw * c * d + student.depth * (dense + attention)
    dd = student.decoder_width
    dec_dense, dec_attention = perf.transformer_layer_flops(1 + n, dd, student.decoder_mlp_dim)
    decoder = 2 * (1 + keep) * d * dd + student.decoder_depth * (dec_dense + dec_attention) \
        + 2 * (1 + n) * dd * ph * pw * c
    fusion = 2 * dd * dd if model.uniemox.fusion == "easyfusion" else 0
    student_forward = 2 * view + decoder + 2 * d * dd + fusion
    teacher = model.teacher
    visual = clip_visual(teacher)
    teacher_forward = perf.vit_forward_flops(visual) + 2 * teacher.vision_width * teacher.embed_dim
    return {"forward": student_forward + teacher_forward, "train": 3 * student_forward + teacher_forward,
            "student_forward": student_forward, "teacher_forward": teacher_forward}


def clip_visual(teacher: clip.CLIP):
    """A stand-in with the image tower's fields for `perf.vit_forward_flops` (the ViT is built in setup)."""
    size = teacher.image_size
    return vit.ViT(image_size=(size, size), patch_size=(teacher.patch_size,) * 2, width=teacher.vision_width,
                   depth=teacher.vision_depth, num_heads=teacher.vision_heads, mlp_dim=teacher.vision_mlp_dim)
