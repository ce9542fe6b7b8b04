"""Learnable synthetic stand-ins for the sentiment builders (CMU-MOSI/MOSEI/CH-SIMS) and for MER2024.

Both are random-access sources whose sample i depends only on (split seed, i) and whose elements have the
builders' structure, so the CASP and AGT experiments' default runs need no files.

`make_sentiment` (elements like `cmu_mosi` etc.: `text` [T_t, D_t], `audio` [T_a, D_a], `vision` [T_v, D_v]
float32, `audio_length`, `vision_length` int32, `label` float32 in [-3, 3], `id` bytes). Generative model:

    z ~ N(0, I_K)                                             latent sentiment factors of one clip
    label = clip(3 tanh(0.8 w.z + 0.3 z_0 z_1) + 0.15 e, -3, 3)   |w| = 1: nonlinear (saturating, one interaction)
    x_m[t] = env_m(t) A_m z + sigma_m n_t                      every modality m expresses all K factors
             env_m(t) = 1 + 0.5 sin(2 pi f_m t / T_m + phase)  (phase per clip), A_m ~ N(0, 1/K) [D_m, K]
    frames t >= length_m are zero (MMSA's padding); length_m ~ U[T_m / 2, T_m] unless `aligned` (text: T_t)

`A_m`, `w` and `f_m` come from `world_seed` and are shared by every split, domain and run seed. The target
domain (`domain="target"` or a split named `target_<split>`) changes the feature distribution with strength
`shift` (0: none; `<modality>_shift` sets one modality's strength, as when one sensor changes), using
`shift_seed`, for every valid frame:

    x_m -> offset_m + scale_m * (R_m x_m)     offset_m ~ shift N(0, 1), log scale_m ~ 0.5 shift N(0, 1) per dim,
                                              R_m = expm(0.5 shift (G - G^T) / sqrt(2 D_m)) a rotation
    sigma_m -> sigma_m (1 + 0.5 shift)        noisier target sensors (`<modality>_target_noise` sets the factor)

so a regressor trained on the source degrades on the target; re-estimating per-feature statistics on target
data (what test-time adaptation of normalisation layers does) undoes the offset and scale but not the
rotation or the extra noise: it repairs part of the damage, not all of it.

`make_mer` (elements like `mer2024` UTT: `features` {name: float32 [D]}, `label` int32 (-1 in the pool),
`true_label` int32 (synthetic only: the pool's hidden label, for evaluating pseudo-labels), `id` bytes).
Generative model: class y ~ prior; h = mu_y + spread N(0, I_K) with class means mu_c ~ 1.5 N(0, I_K);
feature f = 2 tanh(W_f h + b_f) + noise_f N(0, I), W_f ~ N(0, 1/K) [D_f, K], noise growing with the
feature's index (features differ in quality, like HuBERT vs CLIP vs an LLM). `train` and `test` are drawn
with `prior` (default: imbalanced, neutral most common); `unlabeled` with the pool prior: `pool_prior` if
given, else `(1 - prior_shift) prior + prior_shift reversed(prior)`, renormalised, so that the class priors
of the labelled set and the pool differ, as MER2024's train and test sets do (what AGT's prior-knowledge
voting corrects).

Config fields (read with `data_config.get`; absent or None: the default in brackets): sentiment: train_size,
eval_size, test_size [eval_size], text_len [8], audio_len [16], vision_len [12], text_dim [16], audio_dim [8],
vision_dim [12], num_factors [4], text_noise [0.6], audio_noise [1.0], vision_noise [1.0], aligned [False],
domain ["source"], shift [1.0], text_shift / audio_shift / vision_shift [shift], shift_seed [4321], world_seed
[1234]. MER: train_size, eval_size, pool_size [2 * train_size], feature_dims [{"audio": 32, "text": 48,
"vision": 24}] (used in sorted name order, as the builder does), num_factors [8], spread [2.0], noise [0.8],
prior, pool_prior, prior_shift [0.7], world_seed [1234].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from jaxemo.data.datasource import SourceBase

MODALITIES = ("text", "audio", "vision")
MER_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
MER_PRIOR = (0.30, 0.20, 0.20, 0.15, 0.10, 0.05)  # illustrative imbalance, not MER2024's measured counts
_SPLIT_OFFSETS = {"train": 0, "test": 1_000_003, "valid": 2_000_003, "unlabeled": 3_000_017}
_TARGET_OFFSET = 5_000_011


def _field(data_config, key: str, default):
    """`data_config[key]`, or `default` when the field is absent or None. `data_config` is an ml_collections
    ConfigDict (`config.data`, `config.target`), as every caller passes."""
    value = data_config.get(key)
    return default if value is None else value


# ------------------------------------------------------------------------------------------------------
# Multimodal sentiment with a source -> target shift


@dataclasses.dataclass(frozen=True)
class SyntheticSentiment(SourceBase):
    """Random-access source (`len`, `[i]`) of clips whose sample i depends only on (seed, i)."""

    num_examples: int
    seq_lens: tuple = (8, 16, 12)  # text, audio, vision
    dims: tuple = (16, 8, 12)
    num_factors: int = 4
    noise: tuple = (0.6, 1.0, 1.0)
    aligned: bool = False
    domain: str = "source"
    shift: float = 1.0
    modality_shift: tuple | None = None  # per-modality strengths (text, audio, vision); None: `shift` for all
    target_noise: tuple | None = None  # per-modality noise multipliers on the target; None: 1 + shift / 2
    seed: int = 0
    world_seed: int = 1234  # mixing, label function: shared by all splits, domains and run seeds
    shift_seed: int = 4321  # the target transform

    def __post_init__(self):
        if self.domain not in ("source", "target"):
            raise ValueError(f"domain={self.domain!r}; expected 'source' or 'target'")
        k = self.num_factors
        rng = np.random.default_rng(self.world_seed)
        w = rng.standard_normal(k)
        object.__setattr__(self, "_w", w / np.linalg.norm(w))
        object.__setattr__(self, "_mixing", [rng.standard_normal((d, k)) / np.sqrt(k) for d in self.dims])
        object.__setattr__(self, "_freqs", rng.uniform(0.5, 2.0, len(MODALITIES)))
        transforms = []
        if self.domain == "target":
            shift_rng = np.random.default_rng(self.shift_seed)
            for d, s in zip(self.dims, self.shifts):
                g = shift_rng.standard_normal((d, d))
                rotation = scipy.linalg.expm(0.5 * s * (g - g.T) / np.sqrt(2 * d))
                scale = np.exp(0.5 * s * shift_rng.standard_normal(d))
                offset = s * shift_rng.standard_normal(d)
                transforms.append((rotation, scale, offset))
        object.__setattr__(self, "_transforms", transforms)

    @property
    def shifts(self) -> tuple:
        return tuple(self.modality_shift) if self.modality_shift is not None else (self.shift,) * len(MODALITIES)

    def __len__(self) -> int:
        return self.num_examples

    def label_of(self, z: np.ndarray, rng: np.random.Generator) -> float:
        score = 0.8 * self._w @ z + 0.3 * z[0] * z[min(1, len(z) - 1)]
        return float(np.clip(3.0 * np.tanh(score) + 0.15 * rng.standard_normal(), -3.0, 3.0))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic clips")
        rng = np.random.default_rng((self.seed, index))
        z = rng.standard_normal(self.num_factors)
        example = {"label": np.float32(self.label_of(z, rng))}
        for m, name in enumerate(MODALITIES):
            t, d = self.seq_lens[m], self.dims[m]
            length = t if (self.aligned or name == "text") else int(rng.integers(max(1, t // 2), t + 1))
            steps = np.arange(t) / t
            envelope = 1.0 + 0.5 * np.sin(2 * np.pi * self._freqs[m] * steps + rng.uniform(0, 2 * np.pi))
            x = envelope[:, None] * (self._mixing[m] @ z)[None, :]
            noise_factor = 1.0
            if self.domain == "target":
                noise_factor = 1.0 + 0.5 * self.shifts[m] if self.target_noise is None else self.target_noise[m]
            x = x + self.noise[m] * noise_factor * rng.standard_normal((t, d))
            if self._transforms:
                rotation, scale, offset = self._transforms[m]
                x = offset + scale * (x @ rotation.T)
            x[length:] = 0.0
            example[name] = x.astype(np.float32)
            if name != "text":
                example[f"{name}_length"] = np.int32(length)
        example["id"] = f"{self.domain}_{self.seed}_{index:06d}".encode()
        return example


def _parse_sentiment_split(data_config, split: str) -> tuple[str, str]:
    domain, name = _field(data_config, "domain", "source"), split
    head, _, tail = split.partition("_")
    if head in ("source", "target") and tail:
        domain, name = head, tail
    if name not in ("train", "valid", "test"):
        raise ValueError(f"synthetic_sentiment split {split!r}: expected train/valid/test, optionally prefixed "
                         f"by source_ or target_ (e.g. target_test)")
    return domain, name


def _modality_shift(data_config) -> tuple | None:
    """(text, audio, vision) shift strengths from `<modality>_shift` fields; None when none is set."""
    values = [_field(data_config, f"{m}_shift", None) for m in MODALITIES]
    if all(v is None for v in values):
        return None
    shift = float(_field(data_config, "shift", 1.0))
    return tuple(shift if v is None else float(v) for v in values)


def _target_noise(data_config) -> tuple | None:
    """(text, audio, vision) target noise multipliers from `<modality>_target_noise`; None when none is set."""
    values = [_field(data_config, f"{m}_target_noise", None) for m in MODALITIES]
    if all(v is None for v in values):
        return None
    shifts = _modality_shift(data_config) or (float(_field(data_config, "shift", 1.0)),) * len(MODALITIES)
    return tuple(1.0 + 0.5 * s if v is None else float(v) for v, s in zip(values, shifts))


def make_sentiment(data_config, split: str, seed: int) -> SyntheticSentiment:
    """`split` in train/valid/test (domain from `data_config.domain`) or source_*/target_* (e.g. target_test).

    `*train` splits have `train_size` clips and the run's seed; the others `eval_size` and other seeds, so no
    two splits (or domains) share a clip."""
    domain, name = _parse_sentiment_split(data_config, split)
    size = data_config.train_size if name == "train" else data_config.eval_size
    if name == "test":
        size = int(_field(data_config, "test_size", size))
    split_seed = seed + _SPLIT_OFFSETS[name] + (_TARGET_OFFSET if domain == "target" else 0)
    return SyntheticSentiment(
        size,
        seq_lens=tuple(int(_field(data_config, f"{m}_len", d)) for m, d in zip(MODALITIES, (8, 16, 12))),
        dims=tuple(int(_field(data_config, f"{m}_dim", d)) for m, d in zip(MODALITIES, (16, 8, 12))),
        num_factors=int(_field(data_config, "num_factors", 4)),
        noise=tuple(float(_field(data_config, f"{m}_noise", d)) for m, d in zip(MODALITIES, (0.6, 1.0, 1.0))),
        aligned=bool(_field(data_config, "aligned", False)),
        domain=domain, shift=float(_field(data_config, "shift", 1.0)), seed=split_seed,
        modality_shift=_modality_shift(data_config), target_noise=_target_noise(data_config),
        world_seed=int(_field(data_config, "world_seed", 1234)),
        shift_seed=int(_field(data_config, "shift_seed", 4321)))


# ------------------------------------------------------------------------------------------------------
# MER-style multi-feature classification with a labelled set and a prior-shifted unlabelled pool


@dataclasses.dataclass(frozen=True)
class SyntheticMer(SourceBase):
    """Random-access source of MER-style samples; sample i depends only on (seed, i)."""

    num_examples: int
    feature_dims: tuple = (("audio", 32), ("text", 48), ("vision", 24))
    prior: tuple = MER_PRIOR
    labelled: bool = True  # False: `label` is -1 and only `true_label` carries the class
    num_factors: int = 8
    spread: float = 2.0  # within-class spread: ~70% test accuracy for a linear model on 600 samples
    noise: float = 0.8
    seed: int = 0
    world_seed: int = 1234

    def __post_init__(self):
        prior = np.asarray(self.prior, np.float64)
        if prior.shape != (len(MER_CLASSES),) or np.any(prior < 0) or prior.sum() <= 0:
            raise ValueError(f"prior {self.prior} must be {len(MER_CLASSES)} non-negative weights")
        object.__setattr__(self, "_prior", prior / prior.sum())
        k = self.num_factors
        rng = np.random.default_rng(self.world_seed)
        object.__setattr__(self, "_means", 1.5 * rng.standard_normal((len(MER_CLASSES), k)))
        object.__setattr__(self, "_maps", [(rng.standard_normal((d, k)) / np.sqrt(k), 0.3 * rng.standard_normal(d))
                                           for _, d in self.feature_dims])

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic samples")
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.choice(len(MER_CLASSES), p=self._prior))
        h = self._means[label] + self.spread * rng.standard_normal(self.num_factors)
        features = {}
        for j, ((name, d), (weights, bias)) in enumerate(zip(self.feature_dims, self._maps)):
            value = 2.0 * np.tanh(weights @ h + bias) + self.noise * (1.0 + 0.5 * j) * rng.standard_normal(d)
            features[name] = value.astype(np.float32)
        return {"features": features, "label": np.int32(label if self.labelled else -1),
                "true_label": np.int32(label), "id": f"mer_{self.seed}_{index:06d}".encode()}


def pool_prior(data_config) -> tuple:
    """The unlabelled pool's class prior: `pool_prior`, else the labelled prior shifted towards its reverse."""
    explicit = _field(data_config, "pool_prior", None)
    if explicit is not None:
        return tuple(float(p) for p in explicit)
    prior = np.asarray(_field(data_config, "prior", MER_PRIOR), np.float64)
    prior = prior / prior.sum()
    s = float(_field(data_config, "prior_shift", 0.7))
    mixed = (1 - s) * prior + s * prior[::-1]
    return tuple((mixed / mixed.sum()).tolist())


def make_mer(data_config, split: str, seed: int) -> SyntheticMer:
    """`train` / `test` (or `valid`): labelled, labelled prior; `unlabeled`: the pool, pool prior, label -1."""
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"synthetic_mer split {split!r}: expected one of {sorted(_SPLIT_OFFSETS)}")
    dims = _field(data_config, "feature_dims", {"audio": 32, "text": 48, "vision": 24})
    feature_dims = tuple(sorted((str(name), int(d)) for name, d in dict(dims).items()))
    if split == "train":
        size = data_config.train_size
    elif split == "unlabeled":
        size = int(_field(data_config, "pool_size", 2 * data_config.train_size))
    else:
        size = data_config.eval_size
    labelled = split != "unlabeled"
    prior = tuple(_field(data_config, "prior", MER_PRIOR)) if labelled else pool_prior(data_config)
    return SyntheticMer(size, feature_dims=feature_dims, prior=prior, labelled=labelled,
                        num_factors=int(_field(data_config, "num_factors", 8)),
                        spread=float(_field(data_config, "spread", 2.0)),
                        noise=float(_field(data_config, "noise", 0.8)),
                        seed=seed + _SPLIT_OFFSETS[split], world_seed=int(_field(data_config, "world_seed", 1234)))
