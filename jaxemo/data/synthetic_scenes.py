"""Synthetic scenes with a person, shaped like EmoSet elements, for UniEmoX's scene view and person view.

A class is a pair (scene style, pose): `scene = label // num_poses`, `pose = label % num_poses`.
  * The scene style sets the background's global statistics: a sky/ground colour palette, a brightness level
    and a texture (a tinted grating with its own frequency and orientation). Per sample the horizon, colours,
    brightness and texture phase are jittered.
  * The pose sets the person figure drawn in a random box: its clothing colour and its arm angle (raised,
    hanging, ...), with a little jitter.
So the full image alone carries both parts, the person crop alone mostly the pose, and the class is only fully
recoverable with both. With probability `1 - person_prob` there is no person (`has_person` False, no boxes,
`person_box` = the whole image, as the builders' fallback); then only the scene part is observable.

Elements (as `builders.data_source("emoset", ...)` gives them; text fields are bytes like TFDS Text):
  image uint8 [S, S, 3]; label int32; id; person_boxes float32 [n, 4] (n = 0 or 1, normalised xyxy);
  person_box float32 [4]; has_person bool; brightness, colorfulness (EmoSet's "0.0".."1.0" bins of the mean
  luminance and of the Hasler-Suesstrunk colourfulness), scene, object ("Person" or ""), facial_expression and
  human_action (from the pose; "" without a person).
Sample i depends only on (seed, i); the class appearance only on `class_seed`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxemo.data.datasource import SourceBase
from jaxemo.data.synthetic import split_size_and_seed

SCENE_NAMES = ("beach", "forest", "street", "desert", "snowfield", "stage", "swamp", "playground")
POSE_ACTIONS = ("raising arms", "standing with arms down", "stretching arms", "reaching forward")
POSE_EXPRESSIONS = ("happy", "sad", "surprise", "neutral")
SKIN = np.array([0.92, 0.76, 0.62])
WHOLE_IMAGE = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _bin(value: float) -> bytes:
    """EmoSet's attribute bins: one decimal in [0, 1], written as str(float) writes it ("0.3")."""
    return str(round(min(max(value, 0.0), 1.0) * 10) / 10).encode()


@dataclasses.dataclass(frozen=True)
class SyntheticScenes(SourceBase):
    """Random-access source (`len`, `[i]`) of deterministic scene images with a person region."""

    num_examples: int
    num_classes: int = 8
    image_size: int = 64
    num_poses: int = 2
    person_prob: float = 0.8
    noise: float = 0.04
    seed: int = 0
    class_seed: int = 4321  # the class appearances: shared by the train and eval splits

    def __post_init__(self):
        if self.num_classes < 1 or self.num_poses < 1:
            raise ValueError(f"num_classes={self.num_classes} and num_poses={self.num_poses} must be >= 1")
        rng = np.random.default_rng(self.class_seed)
        scenes, poses = self.num_scenes, self.num_poses
        setattr_ = object.__setattr__
        setattr_(self, "_sky", rng.uniform(0.15, 0.9, (scenes, 3)))
        setattr_(self, "_ground", rng.uniform(0.1, 0.8, (scenes, 3)))
        setattr_(self, "_level", rng.permutation(np.linspace(-0.18, 0.18, scenes)))
        setattr_(self, "_freq", rng.uniform(2.0, 7.0, scenes))
        setattr_(self, "_angle", rng.permutation(np.pi * (np.arange(scenes) + rng.uniform(0, 1, scenes)) / scenes))
        setattr_(self, "_texture", rng.uniform(-0.2, 0.2, (scenes, 3)))
        hue0 = rng.uniform()
        clothes = [_hsv_to_rgb((hue0 + k / poses) % 1.0, 0.85, 0.85) for k in range(poses)]  # hues spread apart
        setattr_(self, "_clothes", np.stack(clothes))
        # Arm angle from horizontal (radians, positive = raised): spread from raised to hanging.
        setattr_(self, "_arm", np.radians(np.linspace(65.0, -65.0, poses)) if poses > 1 else np.array([0.0]))

    @property
    def num_scenes(self) -> int:
        return math.ceil(self.num_classes / self.num_poses)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic scenes")
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(self.num_classes))
        scene, pose = divmod(label, self.num_poses)
        size = self.image_size
        coords = (np.arange(size) + 0.5) / size
        y, x = np.meshgrid(coords, coords, indexing="ij")
        pixels = self._background(scene, x, y, rng)
        has_person = bool(rng.uniform() < self.person_prob)
        boxes = np.zeros((0, 4), np.float32)
        if has_person:
            box = self._draw_person(pixels, pose, x, y, rng)
            boxes = box[None].astype(np.float32)
        pixels = pixels + self.noise * rng.standard_normal(pixels.shape)
        image = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
        return {
            "image": image,
            "label": np.int32(label),
            "id": f"synthetic_scenes/{self.seed}/{index}".encode(),
            "person_boxes": boxes,
            "person_box": boxes[0] if has_person else WHOLE_IMAGE.copy(),
            "has_person": np.bool_(has_person),
            **self._attributes(image, scene, pose, has_person),
        }

    def _background(self, scene: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        horizon = rng.uniform(0.35, 0.65)
        sky = self._sky[scene] + rng.normal(0, 0.04, 3)
        ground = self._ground[scene] + rng.normal(0, 0.04, 3)
        blend = (1.0 / (1.0 + np.exp(-(y - horizon) / 0.03)))[..., None]
        angle = self._angle[scene]
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * self._freq[scene] * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        level = self._level[scene] + rng.uniform(-0.04, 0.04)
        return (1 - blend) * sky + blend * ground + wave[..., None] * self._texture[scene] + level

    def _draw_person(self, pixels: np.ndarray, pose: int, x: np.ndarray, y: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
        """Paints a stick-and-block figure into `pixels` in place; returns its box (normalised xyxy)."""
        w, h = rng.uniform(0.22, 0.34), rng.uniform(0.45, 0.7)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        clothes = np.clip(self._clothes[pose] + rng.normal(0, 0.04, 3), 0, 1)
        min_thickness = 1.0 / self.image_size
        cx = x0 + 0.5 * w
        shoulder_y, hip_y = y0 + 0.27 * h, y0 + 0.62 * h
        angle = self._arm[pose] + rng.normal(0, np.radians(5))
        reach_x, reach_y = 0.34 * w, 0.25 * h
        length = min(reach_x / max(abs(np.cos(angle)), 1e-3), reach_y / max(abs(np.sin(angle)), 1e-3))
        body = (np.abs(x - cx) <= 0.15 * w) & (y >= y0 + 0.22 * h) & (y <= hip_y)
        for side in (-1.0, 1.0):
            start = (cx + side * 0.14 * w, shoulder_y)
            end = (start[0] + side * length * np.cos(angle), shoulder_y - length * np.sin(angle))
            body |= _segment_distance(x, y, start, end) <= max(0.05 * w, min_thickness)
            foot = (cx + side * 0.3 * w, y0 + h)
            body |= _segment_distance(x, y, (cx + side * 0.08 * w, hip_y), foot) <= max(0.06 * w, min_thickness)
        head = (x - cx) ** 2 + (y - (y0 + 0.11 * h)) ** 2 <= (0.1 * h) ** 2
        inside = (x >= x0) & (x <= x0 + w) & (y >= y0) & (y <= y0 + h)  # the box bounds the figure exactly
        pixels[body & inside] = clothes
        pixels[head & inside] = SKIN
        return np.array([x0, y0, x0 + w, y0 + h])

    def _attributes(self, image: np.ndarray, scene: int, pose: int, has_person: bool) -> dict:
        rgb = image.astype(np.float64)
        luminance = (rgb @ np.array([0.299, 0.587, 0.114])).mean() / 255
        rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
        colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        name = SCENE_NAMES[scene % len(SCENE_NAMES)]
        if scene >= len(SCENE_NAMES):
            name = f"{name}_{scene // len(SCENE_NAMES)}"
        person = {
            "object": b"Person",
            "facial_expression": POSE_EXPRESSIONS[pose % len(POSE_EXPRESSIONS)].encode(),
            "human_action": POSE_ACTIONS[pose % len(POSE_ACTIONS)].encode(),
        }
        return {
            "brightness": _bin(luminance),
            "colorfulness": _bin(colourfulness / 150.0),
            "scene": name.encode(),
            **(person if has_person else {k: b"" for k in person}),
        }


def _segment_distance(x: np.ndarray, y: np.ndarray, a: tuple, b: tuple) -> np.ndarray:
    """Distance from every pixel centre (x, y) to the segment a-b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = np.clip(((x - a[0]) * dx + (y - a[1]) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(x - (a[0] + t * dx), y - (a[1] + t * dy))


def make(data_config, split: str, seed: int) -> SyntheticScenes:
    """`config.data` fields: train_size, eval_size, and optionally num_classes (8), image_size (64),
    num_poses (2), person_prob (0.8), noise (0.04)."""
    size, split_seed = split_size_and_seed(data_config, split, seed)
    return SyntheticScenes(size, num_classes=data_config.get("num_classes", 8),
                           image_size=data_config.get("image_size", 64), num_poses=data_config.get("num_poses", 2),
                           person_prob=data_config.get("person_prob", 0.8), noise=data_config.get("noise", 0.04),
                           seed=split_seed)
