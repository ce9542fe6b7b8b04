"""UniEmoX (Chen, Sun, Liu, IEEE TIP 2025): CLIP-guided masked-image pretraining, then visual emotion fine-tuning.

The models are `jaxemo/models/{mae,clip,uniemox}.py`, the recipe `experiments/configs/uniemox.py`, the run
`python -m experiments.uniemox`. Here, by stage:

    prompts    the reference's prompts from EmoSet attributes; the teacher's text features, cached
    pretrain   student and teacher from a config, the scene and person views, `PretrainTask`, the synthetic
               teacher's `ClipContrastiveTask`, FLOPs
    finetune   the MAE-style classifier, its augmentation and task, the pretrained encoder as its start
and `SYSTEM`, whose `build_task(config)` builds the task of the stage `config.stage` names (`stage_config`),
and whose benchmark cases are the pretraining step (ViT-B/16 or ViT-L/16 student with the CLIP-B/16 teacher)
and the fine-tuning step (`python -m benchmarks.steps --system=uniemox`).
"""

from __future__ import annotations

import numpy as np

from jaxemo import vit
from jaxemo.systems.base import TINY, CaseOptions, Flops, PaperRun, StepBenchmark, StepCase, System
from jaxemo.systems.uniemox import finetune, pretrain, prompts
from jaxemo.systems.uniemox.prompts import emotion_prompt, example_prompt, text_features

__all__ = ["finetune", "pretrain", "prompts", "emotion_prompt", "example_prompt", "text_features", "stage_config",
           "build_task", "flops", "SYSTEM"]


STAGES = ("teacher", "pretrain", "finetune")


def stage_config(config, stage: str):
    """The trainer's config for one stage (`STAGES`): a copy of the recipe with `stage` set, the stage's batch
    size, epochs, optimizer, logging and best-checkpoint settings (`teacher.train`, `pretrain`, `finetune.train`)
    at the top, and the learning rate set to `base_learning_rate x batch_size / 256` (the reference's scaling) where a base
    is given. Layer decay without `layer_decay_depth` spans the student's depth."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: expected one of {STAGES}")
    out = config.copy_and_resolve_references()
    settings = {"teacher": out.teacher.train, "pretrain": out.pretrain, "finetune": out.finetune.train}[stage]
    with out.unlocked():
        out.update(settings)
        out.stage = stage
    base = out.optimizer.get("base_learning_rate")
    if base:
        out.optimizer.learning_rate = float(base) * out.batch_size / 256
    if out.optimizer.get("layer_decay") and not out.optimizer.get("layer_decay_depth"):
        out.optimizer.layer_decay_depth = out.model.depth or vit.decode_variant(out.model.variant)["depth"]
    return out


def build_task(config):
    """The task of the stage `config.stage` names (`stage_config` sets it): `pretrain` the UniEmoX objective,
    `finetune` the classifier over `config.data.num_classes` classes, `teacher` the contrastive training of a
    CLIP teacher where no pretrained one is given. The run's own tables join as host transforms:
    `dataclasses.replace(task, host=...)` (`pretrain.PromptFeatures`, `pretrain.PromptTokens`)."""
    stage = config.get("stage") or "pretrain"
    if stage == "pretrain":
        return pretrain.build_task(config)
    if stage == "finetune":
        return finetune.build_task(config)
    if stage == "teacher":
        return pretrain.ClipContrastiveTask(pretrain.build_teacher(config))
    raise ValueError(f"config.stage={stage!r}: expected one of {STAGES}")


def flops(config):
    """Per-example FLOPs of the stage's model (`build_task`); None for the teacher stage (not counted)."""
    stage = config.get("stage") or "pretrain"
    if stage == "pretrain":
        counts = pretrain.flops(pretrain.build_pretrainer(config))
        return Flops(forward=counts["forward"], train=counts["train"])
    if stage == "finetune":
        return finetune.flops(finetune.build_classifier(config, int(config.data.num_classes)),
                              bool(config.finetune.linear_probe))
    return None


def pretrain_batch(batch_size: int, image_size: int, embed_dim: int, seed: int = 0) -> dict:
    """Random stored elements as the pretraining step gets them: uint8 images, person boxes (a quarter
    without a person), unit prompt features."""
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 0.5, batch_size), rng.uniform(0, 0.4, batch_size)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.2, 0.5, batch_size), y0 + rng.uniform(0.3, 0.6, batch_size)], 1)
    features = rng.standard_normal((batch_size, embed_dim)).astype(np.float32)
    return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
            "person_box": boxes.astype(np.float32), "has_person": rng.uniform(size=batch_size) < 0.75,
            "text_feature": features / np.linalg.norm(features, axis=-1, keepdims=True)}


def finetune_batch(batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
            "label": rng.integers(0, num_classes, (batch_size,), dtype=np.int32)}


def _variant_parts(variant: str) -> tuple[str, str]:
    stage, _, size = variant.partition("-") if variant != TINY else ("pretrain", "", TINY)
    if stage not in ("pretrain", "finetune") or not size:
        raise ValueError(f"uniemox variant {variant!r}: expected pretrain-<ViT>, finetune-<ViT>, tiny or "
                         "finetune-tiny")
    return stage, size


def benchmark_config(variant: str) -> tuple[str, str]:
    return "uniemox", TINY if _variant_parts(variant)[1] == TINY else "paper"


def benchmark_case(config, variant: str, batch_size: int, options: CaseOptions) -> StepCase:
    """`pretrain-B/16`, `pretrain-L/16` (the student's ViT with the `paper` config's CLIP-B/16 teacher, which
    computes in --dtype and is stored in --frozen_dtype), `finetune-B/16`, `finetune-L/16` (8 classes, the
    paper recipe), and `tiny` / `finetune-tiny` (the `tiny` config's sizes). Stochastic depth and dropout off,
    as in the PyTorch twin."""
    stage, size = _variant_parts(variant)
    if size != TINY:
        config.model.update(variant=size, width=None, depth=None, num_heads=None, mlp_dim=None)
    config.model.update(dtype=options.dtype, remat_policy=options.remat_policy)
    if options.image_size:
        config.model.image_size = options.image_size
    config.finetune.drop_path_rate = 0.0
    image = config.model.image_size
    if stage == "pretrain":
        config = stage_config(config, "pretrain")
        config.teacher.dtype, config.frozen_dtype = options.dtype, options.frozen_dtype
        task = build_task(config)
        model = task.model
        student = model.uniemox.student
        label = (f"UniEmoX pretrain, student ViT w{student.width} d{student.depth} p{student.patch_size[0]} "
                 f"(mask {student.mask_ratio}) + CLIP teacher w{model.teacher.vision_width} "
                 f"d{model.teacher.vision_depth}, {image} px")
        batch = pretrain_batch(batch_size, image, model.teacher.embed_dim)
    else:
        config = stage_config(config, "finetune")
        config.finetune.update(rand_augment=True, random_erasing=0.25, mixup=0.8, cutmix=1.0)  # the paper's
        config.frozen_dtype = options.frozen_dtype
        config.data.num_classes = 8
        task = build_task(config)
        model = task.model
        label = f"UniEmoX fine-tune, ViT w{model.width} d{model.depth} p{model.patch_size[0]}, {image} px, 8 classes"
        batch = finetune_batch(batch_size, image, 8)
    return StepCase(label=label, config=config, task=task, batch=batch, flops={"train": task.flops_per_example},
                    torch_comparable=options.remat_policy == "none")


BENCHMARK = StepBenchmark(
    section="uniemox-steps", title="UniEmoX pretraining and fine-tuning steps", unit="image",
    default_variants=("pretrain-B/16", "finetune-B/16"),
    default_batch={"pretrain-B": 16, "pretrain-L": 8, "finetune-B": 16, "finetune-L": 8, TINY: 8,
                   "finetune-tiny": 8},
    config_for=benchmark_config, case=benchmark_case, steps=("train",), cpu_steps={TINY: 5, "finetune-tiny": 5},
    notes=("Random uint8 images at the model's size, person boxes (a quarter without a person) and unit prompt "
           "features; one batch reused. Pretraining: the scene and person views, the masked student on both, "
           "its decoder on the scene, the frozen CLIP image tower on the scene, the three losses. Fine-tuning: "
           "random resized crop, flip, RandAugment, random erasing, mixup/cutmix and the classifier; the PyTorch "
           "twin has no RandAugment (torchvision and timm cannot be installed beside torch 2.13.0), so its "
           "fine-tuning rows do slightly less work.",
           "GFLOP/image: pretraining `uniemox.pretrain.flops` (3x the student's forward, 1x the teacher's); "
           "fine-tuning `jaxemo.perf.vit_forward_flops` x 3. Matmuls only."),
    pod_variants=("pretrain-L/16", "finetune-L/16"),
    paper_runs={  # EmoSet-118K: 94,481 train, 5,905 val, 17,716 test images
        "pretrain-L/16": PaperRun((94_481 + 5_905) * 200, "EmoSet-118K train + val x 200 epochs (the released "
                                  "checkpoint's; the script's default is 800)"),
        "finetune-L/16": PaperRun(94_481 * 100, "EmoSet-118K train x 100 epochs")},
    gpu_args=("--variants=pretrain-L/16,finetune-L/16", "--dtype=bfloat16", "--frozen_dtype=bfloat16",
              "--batch_size=128,64"),
    gpu_limit_s=55)

SYSTEM = System(name="uniemox", title="UniEmoX (Chen, Sun, Liu, IEEE TIP 2025)", configs=("uniemox",),
                build_task=build_task, flops=flops, benchmark=BENCHMARK)
