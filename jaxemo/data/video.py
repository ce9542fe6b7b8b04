"""TSN-style clip sampling, with the index arithmetic of the MMA-DFER reference loader.

The reference (katerynaCh/MMA-DFER `dataloader/video_dataloader.py`, `VideoDataset` with `num_segments=16`,
`duration=1`) chooses one frame per segment:

* train (`train_indices`): `average = num_frames // S`; if `average > 0`, frame `s * average + r_s` with
  `r_s` uniform in `[0, average)` for each segment `s` (so the last `num_frames - S * average` frames are
  never chosen, as in the reference); otherwise (fewer than S frames) `0, 1, ..., num_frames - 1` edge-padded
  with the last frame up to S.
* test (`test_indices`): if `num_frames > S`, `tick = num_frames / S` and frame `int(tick / 2 + tick * s)`,
  the centre of each segment; otherwise the same edge padding (so a 16-frame clip gives 0..15).

The reference also has a branch for `duration > 1` (several consecutive frames per segment); MMA-DFER and
DFER-CLIP use `duration=1` and so does this module. Random draws come from the numpy Generator passed in
(the reference uses numpy's global `randint`): same distribution, different stream.

`sample_clip` is a per-example transform for `jaxemo.data.pipeline` (`transform(example, rng)`): it replaces
the variable-length `frames` [T, H, W, 3] of a clip by `video` [S, H, W, 3].
"""

from __future__ import annotations

import numpy as np

NUM_SEGMENTS = 16


def _check_num_frames(num_frames: int, clip_id=None) -> int:
    num_frames = int(num_frames)
    if num_frames <= 0:
        name = f"clip {clip_id!r}" if clip_id is not None else "a clip"
        raise ValueError(f"{name} has {num_frames} frames; TSN sampling needs at least one frame")
    return num_frames


def _edge_padded(num_frames: int, num_segments: int) -> np.ndarray:
    """0, 1, ..., num_frames - 1, then the last frame repeated up to `num_segments` (numpy's 'edge' pad)."""
    return np.minimum(np.arange(num_segments), num_frames - 1)


def train_indices(num_frames: int, rng: np.random.Generator, num_segments: int = NUM_SEGMENTS,
                  clip_id=None) -> np.ndarray:
    """One random frame inside each of `num_segments` equal segments (int64 [num_segments], ascending)."""
    num_frames = _check_num_frames(num_frames, clip_id)
    average = num_frames // num_segments
    if average > 0:
        return np.arange(num_segments) * average + rng.integers(average, size=num_segments)
    return _edge_padded(num_frames, num_segments)


def test_indices(num_frames: int, num_segments: int = NUM_SEGMENTS, clip_id=None) -> np.ndarray:
    """The centre frame of each of `num_segments` equal segments (int64 [num_segments], ascending)."""
    num_frames = _check_num_frames(num_frames, clip_id)
    if num_frames > num_segments:
        tick = num_frames / float(num_segments)
        # float64 in the reference's order of operations, then truncation (all values are positive)
        return (tick / 2.0 + tick * np.arange(num_segments)).astype(np.int64)
    return _edge_padded(num_frames, num_segments)


def _clip_id(example: dict, id_key: str):
    value = example.get(id_key)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def sample_clip(example: dict, rng: np.random.Generator, num_segments: int = NUM_SEGMENTS, train: bool = True,
                frames_key: str = "frames", output_key: str = "video", id_key: str = "id",
                return_indices: bool = False) -> dict:
    """`example` with `frames` [T, H, W, C] replaced by `video` [num_segments, H, W, C] (same dtype).

    The clip length is `example["num_frames"]` when present (it may be shorter than the stored frames,
    never longer), else `len(frames)`. `train=True` draws random frames from `rng`; `train=False` takes the
    deterministic segment centres and ignores `rng`. With `return_indices`, the chosen frame indices are
    added as `<output_key>_indices` (int32 [num_segments]). Raises ValueError naming the clip (its `id`
    field) when it has no frames.
    """
    frames = np.asarray(example[frames_key])
    clip_id = _clip_id(example, id_key)
    num_frames = int(example["num_frames"]) if "num_frames" in example else frames.shape[0]
    if num_frames > frames.shape[0]:
        raise ValueError(f"clip {clip_id!r}: num_frames={num_frames} but only {frames.shape[0]} frames are "
                         f"stored in {frames_key!r}")
    if train:
        indices = train_indices(num_frames, rng, num_segments, clip_id=clip_id)
    else:
        indices = test_indices(num_frames, num_segments, clip_id=clip_id)
    out = {k: v for k, v in example.items() if k != frames_key}
    out[output_key] = frames[indices]  # fancy indexing copies: the full clip can be freed
    if return_indices:
        out[f"{output_key}_indices"] = indices.astype(np.int32)
    return out
