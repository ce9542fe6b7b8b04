"""MMA-DFER (Chumachenko et al., CVPRW 2024): the task, transforms, folds, pretrained encoders, FLOP count and
benchmark cases of jaxemo's main job; the model is `jaxemo/models/mma_dfer.py`, the recipe
`experiments/configs/mma_dfer.py`, the run `python -m experiments.mma_dfer`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import numpy as np

from jaxemo import layers, perf
from jaxemo.convert import mma_dfer as mma_dfer_convert
from jaxemo.convert.torch_state import load_state_dict
from jaxemo.data import augment, sources, video
from jaxemo.models import mma_dfer
from jaxemo.systems.base import (TINY, CaseOptions, Flops, PaperRun, RobustnessSpec, StepBenchmark, StepCase,
                                 System)
from jaxemo.train import tasks
from jaxemo.train.robustness import Modality


def build_model(config) -> mma_dfer.MMADFER:
    fields = {k: v for k, v in config.model.items() if k != "dtype"}
    fields["audio_shape"] = tuple(fields["audio_shape"])
    return mma_dfer.create(num_classes=config.data.num_classes, dtype=layers.dtype_from_name(config.model.dtype),
                           **fields)


def clip_transform(example: dict, rng: np.random.Generator, *, train: bool, num_classes: int,
                   audio_shape: tuple) -> dict:
    """A stored clip -> the model's inputs: 16 TSN frames (random per segment in training, centres in test,
    edge-padded when the clip is shorter), its fbank and label. Bad clips fail with their id."""
    clip = video.sample_clip(example, rng, train=train)
    clip_id = example.get("id", "?")
    clip_id = clip_id.decode() if isinstance(clip_id, bytes) else clip_id
    label = int(clip["label"])
    if not 0 <= label < num_classes:
        raise ValueError(f"clip {clip_id!r}: label {label} is outside the {num_classes} classes")
    fbank = np.asarray(clip["fbank"], np.float32)
    if fbank.shape != tuple(audio_shape):
        raise ValueError(f"clip {clip_id!r}: fbank of shape {fbank.shape}, expected {tuple(audio_shape)}")
    return {"video": np.asarray(clip["video"]), "fbank": fbank, "label": np.int32(label)}


def preprocess(rng, inputs: dict, train: bool, *, size: int, brightness: float, sampler: str,
               modality_dropout: float = 0.0) -> dict:
    """On device: brightness, a crop shared by the clip's frames and a flip in training; pixels / 255. With
    `modality_dropout` > 0, a training clip loses its video or its audio (zeros) with that probability."""
    clips, fbank = inputs["video"], inputs["fbank"]
    if train:
        clips = augment.mma_dfer_train_clips(rng, clips, size, brightness, sampler=sampler)
        if modality_dropout > 0:  # its own stream: the augmentation's draws stay those of the default recipe
            drop_key, which_key = jax.random.split(jax.random.fold_in(rng, 0x6D6F64))
            dropped = jax.random.uniform(drop_key, clips.shape[:1]) < modality_dropout
            video = jax.random.bernoulli(which_key, 0.5, clips.shape[:1])
            clips = clips * ~(dropped & video).reshape((-1,) + (1,) * (clips.ndim - 1))
            fbank = fbank * ~(dropped & ~video).reshape((-1,) + (1,) * (fbank.ndim - 1))
    else:
        clips = augment.mma_dfer_eval_clips(clips, size)
    return {"video": clips, "fbank": fbank}


def build_task(config) -> tasks.ClassificationTask:
    transform = functools.partial(clip_transform, num_classes=config.data.num_classes,
                                  audio_shape=tuple(config.model.audio_shape))
    model = build_model(config)
    return tasks.ClassificationTask(
        model, config.data.num_classes, input_keys=("video", "fbank"),
        trainable_patterns=mma_dfer.TRAINABLE_PATTERNS,
        preprocess=functools.partial(preprocess, size=config.model.image_size,
                                     brightness=config.augment.brightness, sampler=config.augment.crop_sampler,
                                     modality_dropout=float(config.augment.get("modality_dropout") or 0.0)),
        train_transform=functools.partial(transform, train=True),
        eval_transform=functools.partial(transform, train=False),
        flops_per_example=model_flops(model).train(),
    )


def fold_sources(config, fold: int):
    """(train, test) of one fold: a builder's `fold<k>_train/test`; for synthetic clips, a seed per fold."""
    if config.data.name in sources.SYNTHETIC:
        seed = config.seed + 1000 * fold
        return sources.make_source(config.data, "train", seed), sources.make_source(config.data, "test", seed)
    return (sources.make_source(config.data, f"fold{fold}_train", config.seed),
            sources.make_source(config.data, f"fold{fold}_test", config.seed))


def pretrained_params(config):
    """`params -> params` that loads MAE-Face / AudioMAE into the encoders, or None without checkpoints."""
    image, audio = config.pretrained.get("image"), config.pretrained.get("audio")
    if not image and not audio:
        return None
    if not (image and audio):
        raise ValueError("set both --config.pretrained.image (MAE-Face) and --config.pretrained.audio (AudioMAE)")
    mae_face, audiomae = load_state_dict(image), load_state_dict(audio)

    def load(template):
        params, unused = mma_dfer_convert.from_pretrained_encoders(
            mae_face, audiomae, template, rng_seed=config.seed, audiomae_grid=tuple(config.pretrained.audio_grid))
        for name, keys in unused.items():
            logging.info("%s loaded; its unused keys: %s", name, ", ".join(keys[:20]) or "none")
        return params

    return load


def class_names(config) -> list[str]:
    names = config.data.get("class_names")
    return list(names) if names else [f"class {i}" for i in range(config.data.num_classes)]


# ------------------------------------------------------------------------------------------------ FLOPs


@dataclasses.dataclass(frozen=True)
class MMADFERFlops:
    """Matmul FLOPs of one MMA-DFER clip (T frames + its fbank), split the way the backward pass needs.

    `weights[part]` are matmuls with a weight matrix, `attention[part]` the weightless attention matmuls
    (q k^T and the weighted sum of v), `patch_embed[part]` the patch embeddings (a convolution on the pixels
    or the fbank); `trainable` names the parts whose weights train (the reference's split).
    """

    patch_embed: dict[str, int]
    weights: dict[str, int]
    attention: dict[str, int]
    trainable: frozenset[str]

    @property
    def parts(self) -> dict[str, int]:
        """Forward FLOPs per part: video_encoder, audio_encoder, adapters, joint_proj, temporal, head."""
        names = [*self.weights] + [p for p in self.attention if p not in self.weights]
        return {p: self.patch_embed.get(p, 0) + self.weights.get(p, 0) + self.attention.get(p, 0) for p in names}

    @property
    def forward(self) -> int:
        return sum(self.parts.values())

    def backward(self, recompute_attention_scores: bool = False) -> tuple[int, int]:
        """(activation-gradient FLOPs, weight-gradient FLOPs) of the backward pass.

        Activation gradients flow through every layer, frozen ones included (the prompts, positions and
        adapters that train sit at the input and after every layer): 1x the forward FLOPs of each weight
        matmul, 2x those of each attention matmul (both of its operands need a gradient), and nothing for
        the patch embeddings (no gradient is needed for the pixels or the fbank). Weight gradients (1x
        forward) exist only for trainable weights: frozen encoders get none.

        `recompute_attention_scores` adds one q k^T per encoder attention to the backward, as
        `torch.utils.flop_counter` counts `scaled_dot_product_attention`'s backward (flash-style kernels
        recompute the scores); the temporal transformer's attention is plain matmuls in the reference.
        """
        encoder_attention = sum(v for p, v in self.attention.items() if p.endswith("_encoder"))
        activations = sum(self.weights.values()) + 2 * sum(self.attention.values())
        if recompute_attention_scores:
            activations += encoder_attention // 2
        return activations, sum(v for p, v in self.weights.items() if p in self.trainable)

    def train(self, recompute_attention_scores: bool = False) -> int:
        """Forward + backward FLOPs of one training sample (the optimizer's elementwise update is ignored)."""
        return self.forward + sum(self.backward(recompute_attention_scores))


def flops(config) -> Flops:
    counts = model_flops(build_model(config))
    return Flops(forward=counts.forward, train=counts.train())


def model_flops(model) -> MMADFERFlops:
    """Analytic matmul FLOPs of one clip through `jaxemo.models.mma_dfer.MMADFER` (read from its fields).

    With T frames of N patches (P x P x 3 pixels), an fbank of Na patches (P x P x 1), width D, MLP width M,
    depth L, prompts p and latent width K; each frame has Tv = 1 + N + p tokens, the audio Ta = 1 + Na + p
    (plus the fusion tokens with `fusion="tokens"`, which every layer computes):

        video encoder   T * (2*N*P*P*3*D + L * (8*Tv*D^2 + 4*Tv*D*M + 4*Tv^2*D))    frozen
        audio encoder        2*Na*P*P*D  + L * (8*Ta*D^2 + 4*Ta*D*M + 4*Ta^2*D)     frozen
        adapters        L * 2 * (2*T*Tv + 2*Ta) * D*K   down and up projections, both modalities (bottleneck)
        joint_proj      2*T*D*Dt                         trainable, as everything below
        temporal        per layer 8*S*Dt^2 + 4*S*Dt*Mt + 4*S^2*Dt, S = T + 1 tokens of width Dt
        head            2*Dt*C

    At paper size (16 x 224 px, 512 x 128 fbank, ViT-B/16 encoders) that is 643.7 GFLOPs forward and, by
    `MMADFERFlops.train`, 1,327.1 per training sample (1,340.6 counted as torch.utils.flop_counter counts
    SDPA's backward: `train(recompute_attention_scores=True)`), the dossier's measured figures.
    """
    p, d, m, depth = model.patch_size, model.width, model.mlp_dim, model.depth
    extra = model.num_fusion_tokens if model.fusion == "tokens" else 0
    frames = model.num_frames
    video_patches = (model.image_size // p) ** 2
    audio_patches = (model.audio_shape[0] // p) * (model.audio_shape[1] // p)
    video_tokens = 1 + video_patches + model.num_prompts + extra
    audio_tokens = 1 + audio_patches + model.num_prompts + extra
    video_dense, video_attention = perf.transformer_layer_flops(video_tokens, d, m)
    audio_dense, audio_attention = perf.transformer_layer_flops(audio_tokens, d, m)
    dt, steps = model.temporal_width, frames + 1
    temporal_dense, temporal_attention = perf.transformer_layer_flops(steps, dt, model.temporal_mlp_dim)
    adapters = 0
    if model.fusion == "bottleneck":
        adapters = depth * 2 * (2 * frames * video_tokens + 2 * audio_tokens) * d * model.latent_dim
    return MMADFERFlops(
        patch_embed={"video_encoder": frames * 2 * video_patches * p * p * 3 * d,
                     "audio_encoder": 2 * audio_patches * p * p * d},
        weights={"video_encoder": frames * depth * video_dense, "audio_encoder": depth * audio_dense,
                 "adapters": adapters, "joint_proj": 2 * frames * d * dt,
                 "temporal": model.temporal_depth * temporal_dense, "head": 2 * dt * model.num_classes},
        attention={"video_encoder": frames * depth * video_attention, "audio_encoder": depth * audio_attention,
                   "temporal": model.temporal_depth * temporal_attention},
        trainable=frozenset({"adapters", "joint_proj", "temporal", "head"}),
    )


# ------------------------------------------------------------------------------------------------ benchmark


def random_batch(batch_size: int, model: mma_dfer.MMADFER, seed: int = 0) -> dict:
    """Random stored clips as the trainer gets them: uint8 frames at the model's size, fbank, label."""
    rng = np.random.default_rng(seed)
    size = model.image_size
    return {"video": rng.integers(0, 256, (batch_size, model.num_frames, size, size, 3), dtype=np.uint8),
            "fbank": rng.standard_normal((batch_size, *model.audio_shape)).astype(np.float32),
            "label": rng.integers(0, model.num_classes, (batch_size,), dtype=np.int32)}


def benchmark_config(variant: str) -> tuple[str, str]:
    return "mma_dfer", variant


def benchmark_case(config, variant: str, batch_size: int, options: CaseOptions) -> StepCase:
    """A config variant (`dfew`, `mafw`, `tiny`) with the benchmark's dtype and remat, no stochastic depth
    (the PyTorch twin has none: both do the same work)."""
    config.model.update(dtype=options.dtype, remat_policy=options.remat_policy, encoder_drop_path_rate=0.0)
    if options.image_size:
        config.model.image_size = options.image_size
    config.frozen_dtype = options.frozen_dtype
    task = build_task(config)
    model = task.model
    counts = model_flops(model)
    remat = "" if model.remat_policy == "none" else f", remat {model.remat_policy}"
    label = (f"MMA-DFER {variant} (w{model.width} d{model.depth} p{model.patch_size}; {model.num_frames} x "
             f"{model.image_size}px, fbank {model.audio_shape[0]}x{model.audio_shape[1]}{remat})")
    return StepCase(label=label, config=config, task=task, batch=random_batch(batch_size, model),
                    flops={"train": counts.train(), "inference": counts.forward},
                    torch_comparable=True)  # recomputation changes memory, not the math


SYSTEM = System(
    name="mma_dfer",
    title="MMA-DFER (Chumachenko et al., CVPRW 2024)",
    configs=("mma_dfer",),
    build_task=build_task,
    flops=flops,
    benchmark=StepBenchmark(
        section="mma-dfer-steps", title="MMA-DFER train and inference steps", unit="clip",
        default_variants=("dfew", "tiny"), default_batch={"dfew": 2, "mafw": 2, TINY: 16},
        config_for=benchmark_config, case=benchmark_case, cpu_steps={"dfew": 1, "mafw": 1, TINY: 10},
        notes=("Random uint8 clips (frames at the model's size), N(0, 1) fbanks and labels, one batch reused.",
               "GFLOP/sample (per clip): `jaxemo.systems.mma_dfer.model_flops` (matmuls only); train rows count "
               "the forward, activation gradients through every layer (frozen ones too) and weight gradients "
               "only for the trainable weights (`MMADFERFlops.train()`), inference rows the forward. Remat's "
               "recomputation is not counted."),
        pod_variants=("dfew", "mafw"),
        paper_runs={  # the folds' training clips (dossier §2.1) x 25 epochs
            "dfew": PaperRun((9356 + 9356 + 9357 + 9358 + 9361) * 25, "DFEW: 5 folds x 25 epochs x ~9,358 clips"),
            "mafw": PaperRun((7333 + 7335 + 7339 + 7339 + 7341) * 25, "MAFW: 5 folds x 25 epochs x ~7,337 clips")},
        # bf16 compute and frozen weights; batch 8 (the paper's) and 32, and 64 with remat
        gpu_args=("--variants=dfew", "--dtype=bfloat16", "--frozen_dtype=bfloat16", "--batch_size=8,32,64",
                  "--remat_policy=none,none,full"),
        gpu_limit_s=120),
    # the 16 sampled frames (uint8, before the on-device crop) and the fbank's time frames
    robustness=RobustnessSpec(modalities=(Modality("video", "video"), Modality("audio", "fbank")),
                              eval_source=lambda config, fold: fold_sources(config, fold)[1], metric="uar"),
)
