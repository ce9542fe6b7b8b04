"""UniEmoX: CLIP-guided masked-image pretraining, then fine-tuning on visual emotion datasets, in one run.

    python -m experiments.uniemox                                           # tiny, synthetic scenes
    python -m experiments.uniemox --config=experiments/configs/uniemox.py:paper \
        --config.data.manual_dir=/data/EmoSet-118K --config.pretrained.mae=ckpt/mae_vit_large \
        --config.teacher.checkpoint=ckpt/clip_b16 --config.teacher.tokenizer=clip-vit-base-patch16/tokenizer.json \
        --config.finetune.datasets=emotion6 --config.finetune.manual_dirs.emotion6=/data/Emotion6 \
        --workdir=runs/uniemox

Stages, each in its own folder of the workdir, each resumable (rerun the same command):
  teacher/      only without `teacher.checkpoint`: a CLIP trained on the pretraining images and their prompts
                (with a tokenizer trained on the prompts)
  text_features the teacher's prompt embeddings, computed once (`data.cache_dir` to share them between runs)
  pretrain/     the UniEmoX objective; its held-out losses before and after go to results.json
  finetune/<dataset>/<start>/  per dataset, from the pretrained encoder (and, with `finetune.compare_random_init`,
                from random weights on the same budget); the best epoch by validation top-1, reported on test
`<workdir>/results.json` holds everything the run printed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax

from experiments import cli
from jaxemo.data import builders, sources, text as text_lib
from jaxemo.systems import uniemox
from jaxemo.systems.uniemox import finetune, pretrain
from jaxemo.train import checkpoint, loop


def _json(path: str, value=None):
    if value is None:
        return json.load(open(path)) if os.path.exists(path) else None
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)
    return value


def teacher(config, workdir: str, train_source, eval_source, prompts: list[str]):
    """(CLIP model, its full params, tokenizer, id for the text-feature cache): converted, or trained here
    (None if that training was interrupted)."""
    t = config.teacher
    if t.checkpoint:
        return pretrain.load_teacher(config)
    folder = os.path.join(workdir, "teacher")
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        text_lib.train_bpe_tokenizer(prompts, path, t.tokenizer_vocab_size)
    tokenizer = text_lib.ClipTokenizer(path, t.context_length)
    stage = pretrain.with_tokenizer(uniemox.stage_config(config, "teacher"), tokenizer)
    task = dataclasses.replace(uniemox.build_task(stage),
                               host=pretrain.PromptTokens(tokenizer, tuple(config.data.class_names),
                                                          config.data.prompt_objects))
    model = task.model
    result = loop.train_and_evaluate(stage, folder, task, train_source, eval_source)
    if result.preempted:
        return None
    logging.info("teacher: image-to-prompt retrieval %s", result.eval_metrics)
    return model, jax.device_get(result.state.params), tokenizer, f"{folder}@{int(result.state.step)}"


def run_pretraining(config, workdir: str, train_source, eval_source, results: dict):
    class_names, objects = tuple(config.data.class_names), config.data.prompt_objects
    prompts, count, fallback = pretrain.prompt_table([train_source], class_names, objects)
    results["pretrain_data"] = {"elements": count, "prompts": len(prompts), "without_person": fallback}
    print(f"pretraining data: {count} images, {len(prompts)} distinct prompts, {fallback} without a person box "
          f"({fallback / max(count, 1):.1%}: their person view is a second crop of the whole image)", flush=True)
    eval_prompts = pretrain.prompt_table([eval_source], class_names, objects)[0] if eval_source else []
    all_prompts = list(dict.fromkeys(prompts + eval_prompts))
    found = teacher(config, workdir, train_source, eval_source, all_prompts)
    if found is None:
        return None
    clip_model, clip_params, tokenizer, teacher_id = found
    cache = config.data.cache_dir or os.path.join(workdir, "text_features")
    table = uniemox.text_features(clip_model, clip_params, tokenizer, all_prompts, cache, teacher_id)
    host = pretrain.PromptFeatures({p: i for i, p in enumerate(all_prompts)}, table, class_names, objects)
    stage = pretrain.with_tokenizer(uniemox.stage_config(config, "pretrain"), tokenizer)
    stage.frozen_dtype = config.teacher.dtype
    task = dataclasses.replace(uniemox.build_task(stage), host=host)
    init = pretrain.init_params(config, clip_params)
    folder = os.path.join(workdir, "pretrain")
    start_path = os.path.join(workdir, "pretrain_start.json")
    if eval_source is not None and _json(start_path) is None:
        trainer = loop.Trainer(stage, task, train_source)
        _json(start_path, loop.evaluate_params(stage, task, trainer.init_state(init).params, eval_source)[0])
    result = loop.train_and_evaluate(stage, folder, task, train_source, eval_source, init_params=init)
    if result.preempted:
        return None
    if eval_source is not None:
        results["pretrain"] = {"start": _json(start_path), "end": result.eval_metrics}
        for name in ("reconstruction", "similarity", "contrastive", "loss"):
            print(f"pretraining {name:>14}: {results['pretrain']['start'][name]:.4f} -> "
                  f"{result.eval_metrics[name]:.4f} (held-out)", flush=True)
    return finetune.student_encoder(jax.device_get(result.state.params))


def finetune_data(config, dataset: str):
    """(data config, class count) of one fine-tuning dataset: a builder read from its manual_dir, or (tiny) fresh
    synthetic scenes."""
    data = config.data.copy_and_resolve_references()
    if dataset in sources.SYNTHETIC:
        synthetic = config.finetune.synthetic
        data.update(name=dataset, train_size=synthetic.train_size, eval_size=synthetic.eval_size)
        return data, int(config.data.num_classes), config.seed + synthetic.seed_offset
    manual_dir = config.finetune.manual_dirs.get(dataset)
    if not manual_dir:
        raise ValueError(f"fine-tuning dataset {dataset!r}: set --config.finetune.manual_dirs.{dataset}=<folder>")
    data.update(name=dataset, manual_dir=manual_dir, builder_config=config.finetune.builder_config)
    return data, len(builders.builder_class(dataset).CLASSES), config.seed


def run_finetuning(config, workdir: str, dataset: str, encoder, results: dict) -> bool:
    data, num_classes, seed = finetune_data(config, dataset)
    stage = uniemox.stage_config(config, "finetune")
    data.num_classes = num_classes
    stage.data = data
    train, val, test = (sources.make_source(data, split, seed) for split in ("train", "val", "test"))
    task = uniemox.build_task(stage)
    starts = {"pretrained": finetune.init_from_encoder(encoder, task.model)}
    if config.finetune.compare_random_init:
        starts["random"] = finetune.init_random(task.model)
    for start, init in starts.items():
        folder = os.path.join(workdir, "finetune", dataset, start)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        result = loop.train_and_evaluate(stage, folder, task, train, val, init_params=init)
        if result.preempted:
            return False
        best = checkpoint.load_params(os.path.join(folder, "checkpoints_best"))
        metrics, _ = loop.evaluate_params(stage, task, best, test)
        entry = {"test": metrics, "best_val": result.best}
        results.setdefault("finetune", {}).setdefault(dataset, {})[start] = entry
        top3 = f"  top-3 {metrics['top3_accuracy']:.4f}" if "top3_accuracy" in metrics else ""
        print(f"fine-tune {dataset} from {start}: test top-1 {metrics['accuracy']:.4f}{top3} (best val epoch, "
              f"step {result.best['step']})", flush=True)
    return True


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("uniemox")
    workdir = loop.check_workdir(workdir)
    results = {}
    train_source = sources.make_source(config.data, config.data.train_split, config.seed)
    eval_source = sources.make_source(config.data, config.data.eval_split, config.seed) \
        if config.data.eval_split else None
    encoder = run_pretraining(config, workdir, train_source, eval_source, results)
    if encoder is None:
        print(f"stopped during pretraining; rerun the same command to resume from {workdir}")
        return
    for dataset in config.finetune.datasets:
        if not run_finetuning(config, workdir, dataset, encoder, results):
            print(f"stopped while fine-tuning on {dataset}; rerun the same command to resume from {workdir}")
            return
    _json(os.path.join(workdir, "results.json"), results)
    print(f"results: {workdir}/results.json")


if __name__ == "__main__":
    cli.define_experiment_flags("uniemox", "tiny, paper")
    cli.run(main)
