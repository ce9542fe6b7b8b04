"""Synthetic data and grain pipelines: determinism, per-process rows, exact iterator state, eval padding."""

import numpy as np

from jaxemo.data import pipeline, synthetic


def test_synthetic_samples_depend_only_on_seed_and_index():
    a, b = synthetic.SyntheticImages(50, seed=3), synthetic.SyntheticImages(50, seed=3)
    np.testing.assert_array_equal(a[17]["image"], b[17]["image"])
    assert not np.array_equal(a[17]["image"], synthetic.SyntheticImages(50, seed=4)[17]["image"])
    labels = [int(a[i]["label"]) for i in range(50)]
    assert len(set(labels)) > 5 and all(0 <= l < 10 for l in labels)


def test_synthetic_clips_move_over_time():
    clip = synthetic.SyntheticImages(4, num_frames=6, image_size=16, channels=1, noise=0.0)[0]["image"]
    assert clip.shape == (6, 16, 16, 1) and clip.dtype == np.uint8
    assert not np.array_equal(clip[0], clip[-1])


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_iterator_state_resumes_exactly_across_epochs():
    source = synthetic.SyntheticImages(40, image_size=8)
    iterator = iter(pipeline.train_dataset(source, 8, seed=1, process_index=0, process_count=1))
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 7)  # crosses the epoch boundary at 5 batches per epoch
    resumed = iter(pipeline.train_dataset(source, 8, seed=1, process_index=0, process_count=1))
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 7), strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_process_rows_concatenate_to_the_single_process_batch():
    source = synthetic.SyntheticImages(64, image_size=8)
    whole = _take(iter(pipeline.train_dataset(source, 16, seed=0, process_index=0, process_count=1)), 3)
    parts = [_take(iter(pipeline.train_dataset(source, 16, seed=0, process_index=p, process_count=2)), 3)
             for p in range(2)]
    for k in range(3):
        np.testing.assert_array_equal(np.concatenate([parts[0][k]["label"], parts[1][k]["label"]]),
                                      whole[k]["label"])


def test_eval_batches_pad_the_last_batch_and_mask_it():
    source = synthetic.SyntheticImages(10, image_size=8)
    batches = list(pipeline.eval_batches(source, 4, process_index=0, process_count=1))
    assert [b["mask"].sum() for b in batches] == [4, 4, 2]
    assert batches[-1]["image"].shape == (4, 8, 8, 3)
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(10)])
