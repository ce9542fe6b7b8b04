"""MERTools' frame-level preprocessing: time shrunk by a factor, frames aligned to the text's length.

MERTools (`toolkit/utils/read_data.py`, `main-release.py`) reads `-FRA` features per sample as [T, D] and, before
batching, maps every sequence to a target length with one rule (`func_mapping_feature`):
  * shorter than the target: zeros in front (padding: the LSTM encoder runs over them);
  * longer: zeros in front up to a multiple of the target, then the mean of each run of `ceil(T / target)`
    consecutive frames (the zeros are averaged in, so when the padding exceeds a run the first pooled frames
    are all zero).
Its frame modes use the rule twice: `frm_unalign` shrinks each sequence to ceil(T / 12) frames (`feat_scale`
12); `frm_align` shrinks by 6, then maps every modality to the text's (shrunk) length. Each split is then
front-padded to its longest sequence.

Here (`config.data.frame_scale`, `config.data.frame_align`): the same rule on each sample's real frames, after
the builder's reading; sequences stay end-padded with `lengths/<name>` (the model's convention). Zeros the rule
puts in front of a short sequence count as padding (`lengths` excludes them): the masked models ignore them,
and `lstm_front_padding=True` runs the LSTM over them as MERTools does. Pooled frames, zero or not, are frames.
The padded width is each feature's longest mapped length over the labelled set and the pool together (the
reference pads each split to its own; sets here share a width so pseudo-labelled pool samples join the folds),
which changes only how many zeros a front-padded LSTM runs over.

    frame_scale=12                        MERTools' frm_unalign
    frame_scale=6, frame_align="text"     MERTools' frm_align (a role, as the AGT's `guide`, or a feature name)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxemo.models import agt as agt_model


def map_frames(frames: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """MERTools' `func_mapping_feature` of `frames` [T, D] to `length` steps: (the frames that are data, the
    reference's length). Shorter input comes back unchanged (the reference's front zeros are padding here);
    longer input is front-padded with zeros to a multiple of `length` and mean-pooled to `length` frames."""
    frames = np.asarray(frames)
    count = frames.shape[0]
    if length <= 0:
        raise ValueError(f"cannot map {count} frames to length {length}")
    if count <= length:
        return frames, length
    pool = count // length if count % length == 0 else count // length + 1
    padded = np.concatenate([np.zeros((length * pool - count, frames.shape[1]), np.float64), frames], axis=0)
    return padded.reshape(length, pool, frames.shape[1]).mean(axis=1).astype(frames.dtype), length


def shrink(frames: np.ndarray, scale: int) -> np.ndarray:
    """MERTools' `feature_scale_compress` of one sequence: ceil(T / scale) frames."""
    return map_frames(frames, max(math.ceil(frames.shape[0] / scale), 1))[0] if scale > 1 else frames


def transform_sets(sets: Sequence, scale: int = 1, align: str = "") -> list:
    """The `MerSet`s (`jaxemo.systems.agt.data`) with every frame-level feature shrunk by `scale` and, when
    `align` names a frame-level feature or its role, mapped to that feature's length sample by sample."""
    sets = list(sets)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"data.frame_scale={scale!r}: expected an integer >= 1 (MERTools: 6 or 12)")
    names = tuple(sets[0].lengths)
    if scale == 1 and not align:
        return sets
    if not names:
        raise ValueError(f"data.frame_scale={scale}, data.frame_align={align!r} apply to frame-level features, "
                         f"and {sets[0].feature_names} are utterance-level (a builder config such as `fra`)")
    target = agt_model.resolve_guide(align, names) if align else None
    mapped = []  # per set: {name: [(frames, reference length), ...]}
    for merset in sets:
        per_name = {n: [shrink(merset.features[n][i, :merset.lengths[n][i]], scale) for i in range(len(merset))]
                    for n in names}
        out = {}
        for name in names:
            if target is None:
                out[name] = [(x, len(x)) for x in per_name[name]]
            else:
                out[name] = [map_frames(x, max(len(t), 1)) for x, t in zip(per_name[name], per_name[target])]
        mapped.append(out)
    widths = {n: max(max(length, len(x)) for out in mapped for x, length in out[n]) for n in names}
    results = []
    for merset, out in zip(sets, mapped):
        features, lengths = dict(merset.features), {}
        for name in names:
            rows = np.zeros((len(merset), widths[name], merset.features[name].shape[-1]), np.float32)
            for i, (x, _) in enumerate(out[name]):
                rows[i, :len(x)] = x
            features[name], lengths[name] = rows, np.asarray([len(x) for x, _ in out[name]], np.int32)
        results.append(type(merset)(features, merset.labels, merset.ids, lengths, merset.true_labels))
    return results
