"""CASP (Guo et al., AAAI 2025): source-free test-time adaptation of multimodal sentiment regressors. The
backbones are `jaxemo/models/msa.py`, the methods and modes `jaxemo/tta/`; this module builds them from the
recipe (`experiments/configs/casp.py`), adapts a source model on a target with every method in every mode,
and holds the FLOP count and the benchmark cases (`python -m experiments.casp`, `benchmarks.tta_latency`).
`plateau`: the reference's `ReduceLROnPlateau` as the trainer's eval hook (`config.lr_plateau.enabled`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import jax
import numpy as np

from jaxemo import layers
from jaxemo.data import sources
from jaxemo.models import msa
from jaxemo.systems.base import (TINY, CaseOptions, Flops, GpuRun, PaperRun, RobustnessSpec, StepBenchmark,
                                 StepCase, System)
from jaxemo.train import metrics, tasks
from jaxemo.train.robustness import Modality
from jaxemo.tta import core, methods, modes

logger = logging.getLogger(__name__)


def build_model(config) -> msa.SentimentRegressor:
    fields = {k: v for k, v in config.model.items() if k != "dtype"}
    return msa.create(dtype=layers.dtype_from_name(config.model.dtype), **fields)


def build_task(config) -> tasks.SentimentRegressionTask:
    """The source-training task; its FLOP count needs the sequence lengths, known for the synthetic data."""
    counts = flops(config)
    return tasks.SentimentRegressionTask(build_model(config), flops_per_example=counts.train if counts else None)


def flops(config) -> Flops | None:
    """Per-example FLOPs of the source model where `config.data` gives every sequence length and feature dim
    (the synthetic data; a dataset's lengths are known only once read); training counts 3x the forward."""
    d = config.data
    lengths = [d.get(f"{m}_len") for m in msa.MODALITIES]
    dims = [d.get(f"{m}_dim") for m in msa.MODALITIES]
    if None in lengths + dims:
        return None
    forward = model_flops(build_model(config), lengths, dims).forward
    return Flops(forward=forward, train=3 * forward)


def target_arrays(config, split: str, dims: dict) -> dict:
    """A target split as host arrays, its feature dims checked against (or aligned to) the source's."""
    arrays = modes.stack_source(sources.make_source(config.target, split, config.seed))
    for m in core.MODALITIES:
        have, want = arrays[m].shape[-1], dims[m]
        if have == want:
            continue
        if config.target.align_features != "pad":
            raise ValueError(
                f"target {config.target.name}/{split}: {m} features have {have} dims, the source model's "
                f"{config.data.name} {m} projection takes {want}. Use features from one extraction for both "
                f"(CASP's `casp` pickles), or --config.target.align_features=pad (zero-pad / truncate; not "
                f"CASP's setting)")
        x = arrays[m][..., :want]
        arrays[m] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, want - x.shape[-1])])
    return arrays


def make_method(name: str, config, source_stats=None):
    t = config.tta
    if name == "source_only":
        return methods.SourceOnly()
    if name == "casp":
        return methods.Contrastive(t.temperature, per_sample_drop=t.per_sample_drop)
    if name == "dropout_variance":
        return methods.DropoutVariance(t.dropout_samples)
    if name == "feature_alignment":
        return methods.FeatureAlignment(source_stats)
    raise ValueError(f"tta.methods: {name!r} is unknown; expected one of {sorted(methods.METHODS)}")


def source_feature_stats(config, model, params) -> dict:
    """Per-layer hidden-state statistics on the source train split (all FeatureAlignment keeps of it)."""
    arrays = modes.stack_source(sources.make_source(config.data, config.data.get("train_split", "train"),
                                                    config.seed))
    batches = modes.batched({k: v for k, v in arrays.items() if k in core.INPUT_KEYS}, config.tta.batch_size)
    return methods.feature_statistics(model, params, (
        {k: v[b] for k, v in batches.items()} for b in range(len(batches["mask"]))))


def offline_config(config) -> modes.OfflineConfig:
    t = config.tta
    return modes.OfflineConfig(t.epochs, t.snapshot_every, t.pseudo_epochs, t.quantile, t.selection, t.batch_size,
                               t.shuffle, core.OptimizerConfig(t.learning_rate, t.clip_norm))


def run_mode(mode: str, method, model, frozen, adapted, adapt_data, test_data, config, rng) -> np.ndarray:
    """Test-split predictions of one method in one mode."""
    t = config.tta
    test_inputs = {k: v for k, v in test_data.items() if k in core.INPUT_KEYS}
    if isinstance(method, methods.SourceOnly):
        batches = modes.batched(test_inputs, t.batch_size)
        return modes.unbatch(modes.predict_batches(model, frozen, adapted, batches), len(test_data["label"]))
    optimizer = core.OptimizerConfig(t.learning_rate, t.clip_norm)
    if mode == "offline":
        unlabelled = {k: v for k, v in adapt_data.items() if k in core.INPUT_KEYS}
        if isinstance(method, methods.Contrastive):
            result = modes.casp_offline(model, frozen, adapted, unlabelled, offline_config(config), rng, method)
        else:
            result = modes.adapt_offline(method, model, frozen, adapted, unlabelled, offline_config(config), rng)
        batches = modes.batched(test_inputs, t.batch_size)
        predictions = modes.predict_batches(model, frozen, result.adapted, batches)
        return modes.unbatch(predictions, len(test_data["label"]))
    if mode == "online":
        return modes.adapt_online(method, model, frozen, adapted, test_inputs, t.batch_size, rng, t.online_steps,
                                  optimizer)[0]
    if mode == "episodic":
        episodic = modes.EpisodicConfig(t.episodic_steps, t.episodic_views, optimizer)
        return modes.episodic_predict(method, model, frozen, adapted, test_inputs, rng, episodic, t.episodic_batch)
    raise ValueError(f"tta.modes: {mode!r} is unknown; expected offline, online or episodic")


def run_adaptation(config, params: dict) -> dict:
    """Every method of `config.tta.methods` in every mode of `config.tta.modes` from the source `params`:
    {"source", "target", "backbone", "results": [one row of test-split metrics and seconds each]}."""
    model = build_model(config)
    frozen, adapted = core.split(params, tuple(config.tta.adapted))
    dims = {m: int(params[f"proj_{m}"]["kernel"].shape[0]) for m in core.MODALITIES}
    adapt_data = target_arrays(config, config.target.adapt_split, dims)
    test_data = target_arrays(config, config.target.test_split, dims)
    source_stats = (source_feature_stats(config, model, params)
                    if "feature_alignment" in config.tta.methods else None)
    results = []
    for name in config.tta.methods:
        method = make_method(name, config, source_stats)
        for mode in (["-"] if name == "source_only" else config.tta.modes):
            start = time.perf_counter()
            rng = jax.random.key(config.seed)
            predictions = run_mode(mode, method, model, frozen, adapted, adapt_data, test_data, config, rng)
            row = {"method": name, "mode": mode, "seconds": time.perf_counter() - start,
                   **metrics.sentiment_metrics(predictions, test_data["label"])}
            logger.info("%s / %s: MAE %.4f, corr %.4f (%.1f s)", name, mode, row["mae"], row["corr"],
                        row["seconds"])
            results.append(row)
    return {"source": config.data.name, "target": config.target.name, "backbone": config.model.fusion,
            "results": results}


# ------------------------------------------------------------------------------------------------ FLOPs


@dataclasses.dataclass(frozen=True)
class MSAFlops:
    """Matmul FLOPs of one sample through `jaxemo.models.msa.SentimentRegressor`.

    `forward` is the whole forward pass. `backward` is what a test-time adaptation step adds when only
    LayerNorm parameters train: activation gradients through every layer above the input projections
    (1x each weight matmul, 2x each attention matmul; the projections need none, their inputs are data),
    and no weight gradients beyond the LayerNorms' elementwise ones.
    """

    projections: int
    weights: int  # every other matmul with a weight matrix (encoders and head)
    attention: int

    @property
    def forward(self) -> int:
        return self.projections + self.weights + self.attention

    @property
    def backward(self) -> int:
        return self.weights + 2 * self.attention


def model_flops(model, seq_lens: Sequence[int], dims: Sequence[int]) -> MSAFlops:
    """(text, audio, vision) lengths and feature dims -> `MSAFlops`, read from the model's fields:

        projections   sum_m 2 T_m D_m P
        encoder       depth * (8 T P^2 + 4 T P (4P))  weights,  depth * 4 T^2 P  attention   (T tokens)
        late fusion   one encoder per modality on T_m; head 2 (3P) P + 2 (2 P^2) + 2 P on the first tokens
        early fusion  one encoder on T_t + T_a + T_v; head 2 (2 P^2) + 2 P
    """
    p, depth = model.proj_dim, model.depth
    projections = sum(2 * t * d * p for t, d in zip(seq_lens, dims))
    encoders = list(seq_lens) if model.fusion == "late" else [sum(seq_lens)]
    dense = sum(depth * (8 * t * p * p + 4 * t * p * 4 * p) for t in encoders)
    attention = sum(depth * 4 * t * t * p for t in encoders)
    head = 2 * 2 * p * p + 2 * p + (2 * len(seq_lens) * p * p if model.fusion == "late" else 0)
    return MSAFlops(projections, dense + head, attention)


# ------------------------------------------------------------------------------------------------ benchmark


def adaptation_case(config, num_samples: int, tiny: bool = False):
    """The test-time adaptation benchmarks' setup: `(config, model, frozen, adapted, samples)` with a random
    initialisation split as `config.tta.adapted` says and `num_samples` synthetic target samples ({input key:
    array}). `config` is the `synthetic` recipe (MOSI's aligned shapes); `tiny`: one layer, 8 steps of small
    features, for tests."""
    from flax import linen as nn

    from jaxemo.data import synthetic_sentiment

    if tiny:
        config.model.depth = 1
        for part in (config.data, config.target):
            part.update(text_len=8, audio_len=8, vision_len=8, text_dim=16, audio_dim=5, vision_dim=20)
    model = build_model(config)
    target = synthetic_sentiment.make_sentiment(config.target, "target_test", config.seed)
    target = dataclasses.replace(target, num_examples=num_samples)
    samples = {k: v for k, v in modes.stack_source(target).items() if k in core.INPUT_KEYS}
    example = {k: v[:1] for k, v in samples.items()}
    params = jax.device_get(model.init(jax.random.key(0), *(example[k] for k in core.INPUT_KEYS))["params"])
    params = jax.tree.map(np.asarray, nn.unbox(params))
    frozen, adapted = core.split(params, tuple(config.tta.adapted))
    return config, model, frozen, adapted, samples


def random_batch(batch_size: int, config, seed: int = 0) -> dict:
    """Random features with the config's sequence lengths and dims, full lengths, N(0, 1) labels."""
    rng = np.random.default_rng(seed)
    d = config.data
    batch = {m: rng.standard_normal((batch_size, d[f"{m}_len"], d[f"{m}_dim"])).astype(np.float32)
             for m in msa.MODALITIES}
    batch["audio_length"] = np.full((batch_size,), d.audio_len, np.int32)
    batch["vision_length"] = np.full((batch_size,), d.vision_len, np.int32)
    batch["label"] = rng.standard_normal(batch_size).astype(np.float32)
    return batch


def benchmark_config(variant: str) -> tuple[str, str]:
    return "casp", variant


def benchmark_case(config, variant: str, batch_size: int, options: CaseOptions) -> StepCase:
    """Source training of the sentiment regressor: `synthetic` is MOSI-sized (50 steps; text 768, audio 5,
    vision 20), `tiny` the tiny config with one layer per encoder (its rows only show that the harness runs:
    a second layer doubles the compile and shows nothing more)."""
    config.model.dtype = options.dtype
    if variant == TINY:
        config.model.depth = 1
    task = build_task(config)
    counts = flops(config)
    label = (f"CASP {config.model.fusion} fusion {variant} (depth {config.model.depth}, {config.data.text_len} "
             "steps)")
    return StepCase(label=label, config=config, task=task, batch=random_batch(batch_size, config),
                    flops={"train": counts.train, "inference": counts.forward})


SYSTEM = System(
    name="casp",
    title="CASP (Guo et al., AAAI 2025)",
    configs=("casp",),
    build_task=build_task,
    flops=flops,
    benchmark=StepBenchmark(
        section="casp-source-steps", title="CASP sentiment regressor: source train and inference steps",
        unit="sample", default_variants=("synthetic",), default_batch={"synthetic": 24, TINY: 24},
        config_for=benchmark_config, case=benchmark_case, cpu_steps={"synthetic": 20, TINY: 20}, remat=False,
        notes=("Random features and labels, one batch reused. GFLOP/sample: `jaxemo.systems.casp.flops` (matmuls "
               "only), train = 3 x forward. Test-time adaptation latency is `python -m benchmarks.tta_latency`.",),
        pod_variants=("synthetic",),
        paper_runs={"synthetic": PaperRun(16_326 * 30, "source training on CMU-MOSEI train (16,326) x 30 epochs")},
        gpu_args=("--batch_size=1024",), gpu_limit_s=45),
    workloads=(
        GpuRun("tta", "benchmarks.tta_latency", ("--batches=1,256,4096", "--chunk=4096", "--notorch"),
               ("--tiny", "--batches=1,4", "--steps=1", "--notorch", "--nooffline"), 60,
               "test-time adaptation latency, episodic vmap vs per-sample loop"),
    ),
    # the source model on the target's test split (no adaptation): what a failing sensor does to it
    robustness=RobustnessSpec(
        modalities=(Modality("text", "text"), Modality("audio", "audio", length_key="audio_length"),
                    Modality("vision", "vision", length_key="vision_length")),
        eval_source=lambda config, fold: sources.make_source(config.target, config.target.test_split, config.seed),
        metric="mae"),
)
