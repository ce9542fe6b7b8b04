"""The ViT image classifier (`jaxemo.vit`): jaxemo's smallest complete recipe, and the reference point of its
train-step benchmark (`experiments/configs/vit_classifier.py`, `python -m experiments.vit_classifier`)."""

from __future__ import annotations

import numpy as np

from jaxemo import bench, layers, vit
from jaxemo.data import sources
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


def build_task(config, trainable_patterns=None) -> tasks.ClassificationTask:
    model = build_model(config)
    return tasks.ClassificationTask(model, config.data.num_classes, trainable_patterns=trainable_patterns,
                                    flops_per_example=bench.train_flops(bench.vit_forward_flops(model)))


def build_data(config):
    """(train source, eval source) for `config.data` (synthetic by default, or a dataset builder)."""
    return sources.make_sources(config.data, config.seed)


def random_batch(batch_size: int, model: vit.ViT, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = model.image_size
    return {"image": rng.integers(0, 256, (batch_size, h, w, model.in_channels), dtype=np.uint8),
            "label": rng.integers(0, model.num_classes, (batch_size,), dtype=np.int32)}


def benchmark_case(variant: str, batch_size: int, options: bench.CaseOptions) -> bench.StepCase:
    """A ViT variant by name (`S/16`, `B/16`, ... or `tiny`: 4 layers of width 64 on 32 px) with 1,000
    classes and the vit_classifier config's optimizer; no stochastic depth (HF's ViT, the twin, has none)."""
    config = options.load_config("vit_classifier", "tiny" if variant == bench.TINY else "paper")
    if variant != bench.TINY:
        config.model.variant = variant
    config.model.update(dtype=options.dtype, remat_policy=options.remat_policy, drop_path_rate=0.0)
    if options.image_size:
        config.model.image_size = options.image_size
    elif variant != bench.TINY:
        config.model.image_size = 224
    config.data.num_classes = 1000
    config.frozen_dtype = options.frozen_dtype
    task = build_task(config, options.trainable)
    model = task.model
    forward = bench.vit_forward_flops(model)
    label = (f"ViT-tiny (w{model.width} d{model.depth} p{model.patch_size[0]}, {model.image_size[0]} px)"
             if variant == bench.TINY else f"ViT-{variant} ({model.image_size[0]} px)")
    return bench.StepCase(label=label, config=config, task=task, batch=random_batch(batch_size, model),
                          flops={"train": bench.train_flops(forward), "inference": forward},
                          torch_comparable=options.remat_policy == "none")


BENCHMARK = bench.SystemBenchmark(
    name="vit_classifier", section="vit-train-step", title="ViT train step", unit="image",
    default_variants=("S/16", "B/16"), default_batch={"Ti": 64, "S": 32, "B": 16, "L": 8, "H": 4, bench.TINY: 8},
    case=benchmark_case, steps=("train",),
    notes=("Random uint8 images and labels, one batch reused. GFLOP/image: `bench.vit_forward_flops` x 3 "
           "(matmuls only), the PaLM / MaxText convention.",))
