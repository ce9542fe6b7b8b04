"""The ViT image classifier (`jaxemo.vit`): jaxemo's smallest complete recipe, and the reference point of its
train-step benchmark (`experiments/configs/vit_classifier.py`, `python -m experiments.vit_classifier`) and of
the population benchmark (many small trainings as one program, `python -m benchmarks.population`)."""

from __future__ import annotations

import numpy as np

from jaxemo import layers, perf, vit
from jaxemo.data import sources
from jaxemo.systems.base import TINY, CaseOptions, Flops, GpuRun, PaperRun, StepBenchmark, StepCase, System
from jaxemo.train import tasks


def build_model(config) -> vit.ViT:
    m = config.model
    overrides = {k: m[k] for k in ("width", "depth", "num_heads", "mlp_dim") if m.get(k) is not None}
    return vit.create(
        m.variant,
        image_size=(m.image_size, m.image_size),
        in_channels=m.in_channels,
        num_classes=config.data.num_classes,
        pool=m.pool,
        pos_embedding=m.pos_embedding,
        drop_path_rate=m.drop_path_rate,
        dropout_rate=m.dropout_rate,
        scan_layers=m.scan_layers,
        remat_policy=m.remat_policy,
        dtype=layers.dtype_from_name(m.dtype),
        **overrides,
    )


def build_task(config) -> tasks.ClassificationTask:
    """The classifier's task; `config.trainable` (regexes of parameter paths, optional) limits what trains."""
    model = build_model(config)
    return tasks.ClassificationTask(model, config.data.num_classes,
                                    trainable_patterns=tuple(config.get("trainable") or ()) or None,
                                    flops_per_example=model_flops(model).train)


def model_flops(model: vit.ViT) -> Flops:
    forward = perf.vit_forward_flops(model)
    return Flops(forward=forward, train=perf.train_flops(forward))


def flops(config) -> Flops:
    return model_flops(build_model(config))


def build_data(config):
    """(train source, eval source) for `config.data` (synthetic by default, or a dataset builder)."""
    return sources.make_sources(config.data, config.seed)


def random_batch(batch_size: int, model: vit.ViT, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = model.image_size
    return {"image": rng.integers(0, 256, (batch_size, h, w, model.in_channels), dtype=np.uint8),
            "label": rng.integers(0, model.num_classes, (batch_size,), dtype=np.int32)}


def benchmark_config(variant: str) -> tuple[str, str]:
    return "vit_classifier", TINY if variant == TINY else "paper"


def benchmark_case(config, variant: str, batch_size: int, options: CaseOptions) -> StepCase:
    """A ViT variant by name (`S/16`, `B/16`, ... or `tiny`: 4 layers of width 64 on 32 px) with 1,000
    classes and the vit_classifier config's optimizer; no stochastic depth (HF's ViT, the twin, has none)."""
    if variant != TINY:
        config.model.variant = variant
    config.model.update(dtype=options.dtype, remat_policy=options.remat_policy, drop_path_rate=0.0)
    if options.image_size:
        config.model.image_size = options.image_size
    elif variant != TINY:
        config.model.image_size = 224
    config.data.num_classes = 1000
    config.frozen_dtype = options.frozen_dtype
    config.trainable = tuple(options.trainable or ())
    task = build_task(config)
    model = task.model
    counts = model_flops(model)
    label = (f"ViT-tiny (w{model.width} d{model.depth} p{model.patch_size[0]}, {model.image_size[0]} px)"
             if variant == TINY else f"ViT-{variant} ({model.image_size[0]} px)")
    return StepCase(label=label, config=config, task=task, batch=random_batch(batch_size, model),
                    flops={"train": counts.train, "inference": counts.forward},
                    torch_comparable=options.remat_policy == "none")


SYSTEM = System(
    name="vit_classifier",
    title="ViT image classifier (Dosovitskiy et al., ICLR 2021; DeiT recipe)",
    configs=("vit_classifier",),
    build_task=build_task,
    flops=flops,
    benchmark=StepBenchmark(
        section="vit-train-step", title="ViT train step", unit="image",
        default_variants=("S/16", "B/16"), default_batch={"Ti": 64, "S": 32, "B": 16, "L": 8, "H": 4, TINY: 8},
        config_for=benchmark_config, case=benchmark_case, steps=("train",),
        notes=("Random uint8 images and labels, one batch reused. GFLOP/image: `jaxemo.perf.vit_forward_flops` x "
               "3 (matmuls only), the PaLM / MaxText convention.",),
        pod_variants=("B/16",),
        paper_runs={"B/16": PaperRun(1_281_167 * 300, "ImageNet-1k x 300 epochs (DeiT-B)")},
        gpu_args=("--variants=B/16", "--dtype=bfloat16", "--batch_size=256"), gpu_limit_s=60),
    workloads=(
        GpuRun("population", "benchmarks.population",
               ("--trials=512", "--group_size=256", "--sequential_trials=8", "--steps=100"), ("--tiny",), 50,
               "trials per hour, vmapped groups vs one at a time (tiny ViT trials)"),
    ),
)
