"""An experiment reads a real dataset through `--config.data.name=<builder> --config.data.manual_dir=<dir>`:
here vit_classifier on an Emotion6-layout corpus written by the test (class folders of jpgs)."""

import os

import numpy as np
from PIL import Image

from experiments import vit_classifier as experiment
from jaxemo.data.builders import visual_emotion


def write_emotion6(root, per_class=20, seed=0):
    """Class folders of 64 x 48 jpgs whose colour (plus noise) identifies the class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(visual_emotion.Emotion6.CLASSES):
        os.makedirs(root / "images" / name)
        base = np.array([(40 * c) % 256, (90 * c + 60) % 256, (150 - 25 * c) % 256], np.float32)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name / f"{i:03d}.jpg", quality=90)


def test_vit_classifier_trains_on_a_builder_dataset(tmp_path, tiny_config):
    write_emotion6(tmp_path / "Emotion6")
    config = tiny_config(total_steps=40, batch_size=16, eval_batch_size=16, **{
        "model.variant": "Ti/32", "model.image_size": 224, "model.depth": 1, "model.width": 32,
        "model.num_heads": 2, "model.mlp_dim": 64, "data.name": "emotion6", "data.num_classes": 6,
        "data.manual_dir": str(tmp_path / "Emotion6"), "data.data_dir": str(tmp_path / "tfds"),
        "data.builder_config": "224", "data.train_split": "train", "data.eval_split": "test",
        "optimizer.warmup_steps": 5})
    result = experiment.train(config, str(tmp_path / "run"))
    assert result.steps_run == 40
    assert result.eval_metrics["accuracy"] > 0.5  # 6 classes, 24 test images: chance is 1/6
    assert os.path.isdir(tmp_path / "tfds" / "emotion6")
