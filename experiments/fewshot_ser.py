"""The few-shot protocol on ESD for every starting model (Chen & Yu, Interspeech 2023), as population groups.

    python -m experiments.fewshot_ser                                        # tiny, synthetic ESD, 2 starts
    python -m experiments.fewshot_ser --config=experiments/configs/fewshot_ser.py:paper \
        --config.model.checkpoint=ckpt/wav2vec2_base --config.data.manual_dir=/data/ESD --workdir=runs/fewshot

Stages, each resumable (rerun the same command):
  prefinetune/<subset>/     a start without `start_checkpoints.<subset>` is pre-finetuned here first
  trials/<start>/k<k>/      each (start, k) population's finished groups and trials.csv
Results: `trials.csv` (every trial), `by_k.csv` (mean and std per start and k), `by_speaker_emotion.csv`,
`results.json`, `f1_vs_k.png`.
"""

from __future__ import annotations

import logging
import os

import jax

from experiments import cli
from jaxemo.systems import speech_ser
from jaxemo.systems.speech_ser import corpora, fewshot, prefinetune
from jaxemo.train import population


def parse_checkpoints(spec: str) -> dict:
    """`"iemocap+improv=path,podcast=path"` -> {start name: path} (names normalised as `corpora.subset_name`)."""
    out = {}
    for item in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"start_checkpoints item {item!r}: expected <subset>=<checkpoint path>")
        out[corpora.subset_name(corpora.parse_subset(name))] = path
    return out


def start_models(config, workdir: str) -> dict | None:
    """{start name: backbone and projector params}; None if a pre-finetuning was interrupted."""
    starts, checkpoints = {}, parse_checkpoints(config.start_checkpoints)
    for name in config.starts:
        if name == "plain":
            starts[name] = speech_ser.start_params(config)
            continue
        path = checkpoints.get(name)
        if not path:
            folder = os.path.join(workdir, "prefinetune", name.replace("+", "-"))
            pre = config.prefinetune.copy_and_resolve_references()
            with pre.unlocked():
                pre.model = config.model
                pre.seed = config.seed
            result = prefinetune.run(pre, folder, corpora.parse_subset(name))
            if result.preempted:
                return None
            logging.info("start %s: pre-finetuned, best %s", name, result.best)
            path = prefinetune.best_params_path(folder)
        starts[name] = speech_ser.start_params(config, path)
    return starts


def run(config, workdir: str) -> dict | None:
    os.makedirs(workdir, exist_ok=True)
    # Every (start, k) population compiles its programs; the same k of another start compiles the same ones.
    if not jax.config.jax_compilation_cache_dir:  # unless a cache is already set (JAX_COMPILATION_CACHE_DIR)
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    starts = start_models(config, workdir)
    if starts is None:
        return None
    data = fewshot.SpeakerData(config)
    rows = []
    for name, params in starts.items():
        rows.extend(fewshot.run_start(config, workdir, data, name, params))
    population.write_table(rows, workdir)
    return fewshot.report(rows, workdir)


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("fewshot_ser")
    result = run(config, workdir)
    if result is None:
        print(f"stopped during pre-finetuning; rerun the same command to resume from {workdir}")
        return
    print(f"{result['trials']} trials")
    print(fewshot.format_table(result["by_k"]))
    print(f"results: {workdir}/by_k.csv, by_speaker_emotion.csv, results.json, f1_vs_k.png")


if __name__ == "__main__":
    cli.define_experiment_flags("fewshot_ser", "tiny, paper")
    cli.run(main)
