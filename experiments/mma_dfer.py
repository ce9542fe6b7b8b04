"""Train and evaluate MMA-DFER on every fold in one run (jaxemo's main job).

    python -m experiments.mma_dfer                                            # tiny, synthetic clips
    python -m experiments.mma_dfer --config=experiments/configs/mma_dfer.py:dfew \
        --config.data.manual_dir=/data/DFEW --workdir=runs/mma_dfer_dfew

Each fold trains in `<workdir>/fold<k>/`: its checkpoints, the best epoch's checkpoint beside them, metrics and
`confusion.png`. The last-epoch checkpoint is the reported one, as in the paper. `<workdir>/results.json`
holds UAR and WAR per fold and averaged over folds. Rerunning the command resumes an interrupted fold and
re-evaluates finished ones.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np

from jaxemo import cli
from jaxemo.convert import load_torch_state_dict
from jaxemo.convert import mma_dfer as mma_dfer_convert
from jaxemo.data import augment, sources, video
from jaxemo.models import mma_dfer
from jaxemo.train import loop, metrics, state as state_lib, tasks


def build_model(config) -> mma_dfer.MMADFER:
    fields = {k: v for k, v in config.model.items() if k != "dtype"}
    fields["audio_shape"] = tuple(fields["audio_shape"])
    return mma_dfer.MMADFER(num_classes=config.data.num_classes, dtype=state_lib.dtype_from_name(config.model.dtype),
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


def preprocess(rng, inputs: dict, train: bool, *, size: int, brightness: float, sampler: str) -> dict:
    """On device: brightness, a crop shared by the clip's frames and a flip in training; pixels / 255."""
    clips = inputs["video"]
    if train:
        clips = augment.mma_dfer_train_clips(rng, clips, size, brightness, sampler=sampler)
    else:
        clips = augment.mma_dfer_eval_clips(clips, size)
    return {"video": clips, "fbank": inputs["fbank"]}


def build_task(config) -> tasks.ClassificationTask:
    transform = functools.partial(clip_transform, num_classes=config.data.num_classes,
                                  audio_shape=tuple(config.model.audio_shape))
    return tasks.ClassificationTask(
        build_model(config), config.data.num_classes, input_keys=("video", "fbank"),
        trainable_patterns=mma_dfer.TRAINABLE_PATTERNS,
        preprocess=functools.partial(preprocess, size=config.model.image_size,
                                     brightness=config.augment.brightness, sampler=config.augment.crop_sampler),
        train_transform=functools.partial(transform, train=True),
        eval_transform=functools.partial(transform, train=False),
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
    mae_face, audiomae = load_torch_state_dict(image), load_torch_state_dict(audio)

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


def run_fold(config, workdir: str, fold: int) -> dict:
    fold_dir = os.path.join(workdir, f"fold{fold}")
    train_source, test_source = fold_sources(config, fold)
    result = loop.train_and_evaluate(config, fold_dir, build_task(config), train_source, test_source,
                                     init_params=pretrained_params(config))
    if result.preempted:
        return {"fold": fold, "preempted": True}
    metrics.save_confusion_matrix(os.path.join(fold_dir, "confusion.png"), result.eval_stats["confusion"],
                                  class_names(config), f"fold {fold}: UAR {result.eval_metrics['uar']:.4f}, "
                                  f"WAR {result.eval_metrics['war']:.4f} (last epoch)")
    return {"fold": fold, "uar": result.eval_metrics["uar"], "war": result.eval_metrics["war"],
            "loss": result.eval_metrics["loss"], "best": result.best}


def summarize(per_fold: list[dict]) -> dict:
    return {"folds": per_fold, "mean_uar": float(np.mean([r["uar"] for r in per_fold])),
            "mean_war": float(np.mean([r["war"] for r in per_fold]))}


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("mma_dfer")
    workdir = loop.check_workdir(workdir)
    per_fold = []
    for fold in config.data.folds:
        result = run_fold(config, workdir, int(fold))
        if result.get("preempted"):
            print(f"stopped during fold {fold}; rerun the same command to resume from {workdir}")
            return
        per_fold.append(result)
        print(f"fold {fold}: UAR {result['uar']:.4f}  WAR {result['war']:.4f}  (last epoch)")
    summary = summarize(per_fold)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"mean over {len(per_fold)} folds: UAR {summary['mean_uar']:.4f}  WAR {summary['mean_war']:.4f}\n"
          f"results: {workdir}/results.json")


if __name__ == "__main__":
    cli.define_experiment_flags("mma_dfer", "tiny, dfew, mafw")
    cli.run(main)
