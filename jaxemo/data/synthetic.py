"""Learnable synthetic data generated on the fly, so every default run and test needs no files.

`SyntheticImages` draws each class as a coloured sinusoidal grating (a class-specific orientation,
frequency and colour) over a class-specific tint. A sample is its class pattern under a random translation
(a full period, so position carries no information), contrast and brightness, plus Gaussian pixel noise;
with `num_frames` it is a clip whose pattern drifts over time. The label is recoverable from the pixels,
so a tiny ViT learns it to high accuracy in about a minute on a CPU.
Elements are uint8 `[H, W, C]` (or `[T, H, W, C]`) images with an int32 `label`, like the real builders.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxemo.data.datasource import SourceBase


@dataclasses.dataclass(frozen=True)
class SyntheticImages(SourceBase):
    """Random-access source (`len`, `[i]`) of deterministic samples: sample i depends only on (seed, i)."""

    num_examples: int
    num_classes: int = 10
    image_size: int = 32
    channels: int = 3
    num_frames: Optional[int] = None
    noise: float = 0.25
    tint: float = 0.5  # strength of the per-class colour offset relative to the grating
    seed: int = 0
    class_seed: int = 1234  # the class patterns: shared by the train and eval splits

    def __post_init__(self):
        rng = np.random.default_rng(self.class_seed)
        c = self.num_classes
        # Orientations are spread over the half circle so that classes stay distinguishable.
        object.__setattr__(self, "_angles", np.pi * (np.arange(c) + rng.uniform(0, 1, c)) / c)
        object.__setattr__(self, "_freqs", rng.uniform(1.5, 4.0, c))
        object.__setattr__(self, "_colors", rng.uniform(-1.0, 1.0, (c, self.channels)))
        object.__setattr__(self, "_tints", rng.uniform(-1.0, 1.0, (c, self.channels)))

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic examples")
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(self.num_classes))
        frames = self.num_frames or 1
        shift = rng.uniform(0, 1, 2)  # in units of the image size
        drift = rng.uniform(-0.05, 0.05, 2)
        contrast, brightness = rng.uniform(0.6, 1.0), rng.uniform(-0.1, 0.1)
        clip = [self._pattern(label, shift + t * drift) for t in range(frames)]
        pixels = 0.5 + 0.2 * contrast * np.stack(clip) + brightness
        pixels = pixels + self.noise * rng.standard_normal(pixels.shape)
        image = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
        return {"image": image if self.num_frames else image[0], "label": np.int32(label)}

    def _pattern(self, label: int, shift: np.ndarray) -> np.ndarray:
        """`[H, W, C]` class grating translated by `shift` (fractions of the image), plus the class tint."""
        coords = (np.arange(self.image_size) + 0.5) / self.image_size
        y, x = np.meshgrid(coords - shift[0], coords - shift[1], indexing="ij")
        angle = self._angles[label]
        wave = np.sin(2 * np.pi * self._freqs[label] * (x * np.cos(angle) + y * np.sin(angle)))
        return wave[..., None] * self._colors[label] + self.tint * self._tints[label]


def split_size_and_seed(data_config, split: str, seed: int) -> tuple[int, int]:
    """Synthetic splits: `train` uses `train_size` and the run's seed; any other split `eval_size` and a
    different seed, so evaluation never sees a training sample (the class patterns stay the same). A
    validation split (`val`, `validation`) has a third seed: it is not the test split."""
    if split == "train":
        return data_config.train_size, seed
    if split in ("val", "validation"):
        return data_config.eval_size, seed + 2_000_003
    return data_config.eval_size, seed + 1_000_003


def make_images(data_config, split: str, seed: int) -> SyntheticImages:
    size, split_seed = split_size_and_seed(data_config, split, seed)
    return SyntheticImages(size, num_classes=data_config.num_classes, image_size=data_config.image_size,
                           channels=data_config.get("channels", 3), noise=data_config.get("noise", 0.25),
                           num_frames=data_config.get("num_frames"), seed=split_seed)
