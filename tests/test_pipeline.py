"""grain pipelines with per-example transforms, padding and workers; TSN clip sampling as the reference."""

import functools

import numpy as np
import pytest

from jaxemo.data import pipeline, video


class Clips:
    """Random-access clips of 1..40 frames: frame t of clip i has value t in channel 0 and i in channel 1;
    `waveform` has 3..29 samples."""

    def __init__(self, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(1, 41, size)
        self.wave_lengths = rng.integers(3, 30, size)

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        i = int(i)
        frames = np.zeros((self.lengths[i], 2, 2, 3), np.uint8)
        frames[..., 0] = np.arange(self.lengths[i])[:, None, None]
        frames[..., 1] = i
        return {"frames": frames, "num_frames": np.int32(self.lengths[i]), "label": np.int32(i % 7),
                "id": f"clip{i}".encode(), "waveform": np.arange(self.wave_lengths[i], dtype=np.float32) + 1}


def sample4(example, rng):
    out = video.sample_clip(example, rng, num_segments=4, train=True, return_indices=True)
    del out["waveform"]
    return out


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------------------------------------ TSN indices


def test_test_indices_match_a_hand_computed_table():
    table = {  # num_frames -> the reference's centre frames: int(tick / 2 + tick * s), tick = n / 16
        77: [2, 7, 12, 16, 21, 26, 31, 36, 40, 45, 50, 55, 60, 64, 69, 74],
        17: [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16],
        32: list(range(1, 32, 2)),
        100: [3, 9, 15, 21, 28, 34, 40, 46, 53, 59, 65, 71, 78, 84, 90, 96],
        16: list(range(16)),  # not more than 16 frames: 0..n-1, edge-padded
        5: [0, 1, 2, 3, 4] + [4] * 11,
        1: [0] * 16,
    }
    for num_frames, expected in table.items():
        assert video.test_indices(num_frames).tolist() == expected, num_frames


def test_train_indices_one_random_frame_per_segment():
    # 77 frames: segment length 77 // 16 = 4, frame 4 s + r with r in 0..3; frames 64..76 are never used
    got = video.train_indices(77, np.random.default_rng(5))
    expected = np.arange(16) * 4 + np.random.default_rng(5).integers(4, size=16)
    np.testing.assert_array_equal(got, expected)
    draws = np.stack([video.train_indices(77, np.random.default_rng(s)) for s in range(200)])
    assert (draws // 4 == np.arange(16)).all()
    assert set(np.unique(draws - np.arange(16) * 4)) == {0, 1, 2, 3}
    for num_frames in (16, 31):  # one frame per segment: 0..15 every time
        assert video.train_indices(num_frames, np.random.default_rng(0)).tolist() == list(range(16))
    assert video.train_indices(10, np.random.default_rng(0)).tolist() == list(range(10)) + [9] * 6
    low = np.stack([video.train_indices(33, np.random.default_rng(s)) for s in range(100)])
    assert low.min() == 0 and low.max() == 31 and (np.diff(low, axis=1) > 0).all()


def test_sample_clip_shapes_and_errors():
    clip = Clips(4)[2]
    out = video.sample_clip(clip, np.random.default_rng(0), train=False)
    assert "frames" not in out and out["video"].shape == (16, 2, 2, 3) and out["video"].dtype == np.uint8
    np.testing.assert_array_equal(out["video"][:, 0, 0, 0], video.test_indices(int(clip["num_frames"])))
    assert out["label"] == clip["label"]
    empty = dict(clip, frames=np.zeros((0, 2, 2, 3), np.uint8), num_frames=np.int32(0))
    with pytest.raises(ValueError, match="clip2"):
        video.sample_clip(empty, np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip2"):
        video.sample_clip(dict(clip, num_frames=np.int32(99)), np.random.default_rng(0))
    shorter = dict(clip, num_frames=np.int32(3))  # stored frames may be padded beyond num_frames
    assert video.sample_clip(shorter, None, train=False)["video"][:, 0, 0, 0].tolist() == [0, 1, 2] + [2] * 13


# ------------------------------------------------------------------------------------------------ train


def _train(source, **kwargs):
    defaults = {"global_batch_size": 4, "seed": 3, "process_index": 0, "process_count": 1, "transform": sample4}
    return iter(pipeline.train_dataset(source, **{**defaults, **kwargs}))


def test_random_transform_resumes_exactly_across_epochs():
    source = Clips(10)
    iterator = _train(source)
    _take(iterator, 2)
    state = iterator.get_state()
    expected = _take(iterator, 6)  # 2 batches per epoch: crosses 3 epoch boundaries
    resumed = _train(source)
    resumed.set_state(state)
    _assert_same(expected, _take(resumed, 6))
    for batch in expected:  # the transform ran: frame values are the chosen indices, of the right clip
        np.testing.assert_array_equal(batch["video"][:, :, 0, 0, 0], batch["video_indices"])
        assert (batch["video_indices"] < batch["num_frames"][:, None]).all()


def test_state_is_the_next_batch_and_resumes_with_another_process_count():
    source = Clips(24)
    iterator = _train(source, global_batch_size=8)
    _take(iterator, 3)
    assert iterator.get_state() == {"next_index": 3}
    parts = []
    for p in range(2):
        part = _train(source, global_batch_size=8, process_index=p, process_count=2)
        part.set_state({"next_index": 3})
        parts.append(next(part))
    whole = next(iterator)
    np.testing.assert_array_equal(np.concatenate([parts[0]["video"], parts[1]["video"]]), whole["video"])
    grain_multiprocess_state = {"iterators_in_use_states": [{"next_index": 2}, {"next_index": 2}]}
    iterator.set_state(grain_multiprocess_state)  # what grain's own mp_prefetch iterator saved: 4 batches
    np.testing.assert_array_equal(next(iterator)["video"], _take(_train(source, global_batch_size=8), 5)[4]["video"])


def test_random_transform_does_not_depend_on_the_process_count():
    source = Clips(24)
    whole = _take(_train(source, global_batch_size=8), 4)
    parts = [_take(_train(source, global_batch_size=8, process_index=p, process_count=2), 4) for p in range(2)]
    for k in range(4):
        for key in whole[k]:
            np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])


def test_each_epoch_draws_new_frames():
    source = Clips(4)
    batches = _take(_train(source), 40)  # one batch per epoch, 40 epochs
    per_clip = {}
    for batch in batches:
        for clip, indices in zip(batch["video"][:, 0, 0, 0, 1], batch["video_indices"]):
            per_clip.setdefault(int(clip), set()).add(tuple(indices))
    long_clips = [i for i in range(4) if source.lengths[i] >= 32]
    assert all(len(per_clip[i]) > 1 for i in long_clips)


# ------------------------------------------------------------------------------------------------ padding


def test_pad_spec_pads_crops_and_masks():
    source = Clips(12)
    batch = next(_train(source, transform=None, pad_spec={"waveform": 16, "frames": 8}))
    assert batch["waveform"].shape == (4, 16) and batch["waveform_mask"].dtype == bool
    assert batch["frames"].shape == (4, 8, 2, 2, 3)
    for wave, mask, length in zip(batch["waveform"], batch["waveform_mask"], batch["waveform_length"]):
        assert mask.sum() == length == min(length, 16) and mask[:length].all()
        np.testing.assert_array_equal(wave[:length], np.arange(length) + 1)  # first `length` samples kept
        np.testing.assert_array_equal(wave[length:], 0)
    lengths = batch["waveform_length"]
    assert batch["waveform_length"].dtype == np.int32 and lengths.max() <= 16


def test_variable_length_fields_without_pad_spec_name_the_field():
    with pytest.raises(ValueError, match="'waveform'.*pad_spec"):
        next(_train(Clips(12, seed=1), transform=functools.partial(video.sample_clip, num_segments=4)))


# ------------------------------------------------------------------------------------------------ eval


def test_eval_batches_transform_padding_and_masks():
    source = Clips(10)
    transform = functools.partial(video.sample_clip, num_segments=4, train=False, return_indices=True)
    batches = list(pipeline.eval_batches(source, 4, process_index=0, process_count=1, transform=transform,
                                         pad_spec={"waveform": 8}))
    assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
    again = list(pipeline.eval_batches(source, 4, process_index=0, process_count=1, transform=transform,
                                       pad_spec={"waveform": 8}))
    _assert_same(batches, again)
    rows = {k: np.concatenate([b[k][b["mask"]] for b in batches]) for k in batches[0]}
    np.testing.assert_array_equal(rows["label"], [source[i]["label"] for i in range(10)])
    for i in range(10):
        np.testing.assert_array_equal(rows["video_indices"][i], video.test_indices(source.lengths[i], 4))
    assert rows["waveform"].shape == (10, 8)
    parts = [list(pipeline.eval_batches(source, 4, process_index=p, process_count=2, transform=transform,
                                        pad_spec={"waveform": 8})) for p in range(2)]
    for k, batch in enumerate(batches):
        np.testing.assert_array_equal(np.concatenate([parts[0][k]["video"], parts[1][k]["video"]]), batch["video"])
        np.testing.assert_array_equal(np.concatenate([parts[0][k]["mask"], parts[1][k]["mask"]]), batch["mask"])


# ------------------------------------------------------------------------------------------------ TFDS source


def _tfds_clips(tmp_path):
    from benchmarks import data_pipeline

    config = data_pipeline.SyntheticDfewConfig(name="tiny", num_clips=6, min_frames=3, max_frames=20,
                                                frame_size=8, fbank_frames=4)
    return data_pipeline.build(str(tmp_path), config).as_data_source(split="train")


TSN16 = functools.partial(video.sample_clip, num_segments=16, train=True, return_indices=True)


def test_tfds_array_record_source_through_the_pipeline(tmp_path):
    source = _tfds_clips(tmp_path)
    iterator = _train(source, global_batch_size=2, transform=TSN16)
    batch = next(iterator)
    assert batch["video"].shape == (2, 16, 8, 8, 3) and batch["fbank"].shape == (2, 4, 128)
    state = iterator.get_state()
    expected = _take(iterator, 4)
    resumed = _train(source, global_batch_size=2, transform=TSN16)
    resumed.set_state(state)
    _assert_same(expected, _take(resumed, 4))
    clips = {i: source[i] for i in range(len(source))}
    for b in expected:
        for row in range(2):
            clip = clips[int(b["id"][row])]
            np.testing.assert_array_equal(b["video"][row], clip["frames"][b["video_indices"][row]])


@pytest.mark.slow
def test_workers_resume_exactly_and_match_the_in_process_pipeline(tmp_path):
    """grain worker processes (the TFDS source, the builder and the transform cross by pickle)."""
    source = _tfds_clips(tmp_path)
    reference = _take(_train(source, global_batch_size=2, transform=TSN16), 8)
    iterator = _train(source, global_batch_size=2, transform=TSN16, worker_count=2)
    first = _take(iterator, 3)
    state = iterator.get_state()
    rest = _take(iterator, 5)
    _assert_same(reference, first + rest)  # workers change who computes a batch, never what it holds
    resumed = _train(source, global_batch_size=2, transform=TSN16, worker_count=2)
    resumed.set_state(state)
    _assert_same(rest, _take(resumed, 5))
    in_process = _train(source, global_batch_size=2, transform=TSN16)  # another worker count: same batches
    in_process.set_state(state)
    _assert_same(rest, _take(in_process, 5))
    resumed.close()


def test_data_benchmark_tiny_writes_its_section(tmp_path):
    from benchmarks import data_pipeline

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nkeep me\n")
    rows = data_pipeline.main(["--tiny", "--write", f"--benchmarks_file={path}"])
    assert len(rows) == 1 and rows[0].clips_per_s > 0
    text = path.read_text()
    assert "keep me" in text and "<!-- input-pipeline:dfew-clips begin -->" in text
    assert "derived" in text and "python -m benchmarks.steps --system=mma_dfer --write" in text
