"""Pre-finetuning wav2vec 2.0 on emotional speech corpora, one head per corpus (Chen & Yu, Interspeech 2023).

    python -m experiments.prefinetune_ser                                    # tiny, the 4 synthetic corpora
    python -m experiments.prefinetune_ser --config=experiments/configs/prefinetune_ser.py:paper,iemocap+improv \
        --config.model.checkpoint=ckpt/wav2vec2_base --config.corpora.iemocap.manual_dir=/data/IEMOCAP \
        --config.corpora.msp_improv.manual_dir=/data/MSP-IMPROV --workdir=runs/prefinetune/iemocap+improv

The best model (pooled validation accuracy) is `<workdir>/checkpoints_best`, the starting point
`python -m experiments.fewshot_ser` reads (`--config.start_checkpoints=<subset>=<path>`). Rerunning the same
command resumes. `<workdir>/results.json` holds the best epoch and its per-corpus validation metrics.
"""

from __future__ import annotations

import os

from experiments import cli
from jaxemo.systems import speech_ser
from jaxemo.systems.speech_ser import corpora, prefinetune


def run(config, workdir: str) -> dict | None:
    subset = corpora.parse_subset(config.subset)
    result = prefinetune.run(config, workdir, subset)
    if result.preempted:
        return None
    summary = {"subset": config.subset, "best": result.best, "stopped_step": result.stopped_step,
               "steps_run": result.steps_run, "final_eval": result.eval_metrics,
               "checkpoint": prefinetune.best_params_path(workdir)}
    speech_ser.write_json(os.path.join(workdir, "results.json"), summary)
    return summary


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("prefinetune_ser")
    summary = run(config, workdir)
    if summary is None:
        print(f"stopped; rerun the same command to resume from {workdir}")
        return
    best = summary["best"] or {}
    print(f"pre-finetuned on {config.subset}: best pooled validation accuracy {best.get('value', float('nan')):.3f} "
          f"at step {best.get('step')}; model in {summary['checkpoint']}")


if __name__ == "__main__":
    cli.define_experiment_flags("prefinetune_ser", "tiny, paper, <variant>,<corpus subset>")
    cli.run(main)
