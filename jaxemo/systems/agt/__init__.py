"""AGT for MER2024 MER-SEMI (Shi & Gao, MRAC 2024): the models are `jaxemo/models/agt.py`; here, by stage:

    data       the labelled set and the unlabelled pool as host arrays (`MerSet`), folds, class priors
    task       the six-class cross-entropy task and the models' analytic FLOP counts
    cv         MERTools' recipe: folds x random hyperparameter draws as population groups, the best draw
    selftrain  confident pool samples as pseudo-labels, per-class (adaptive) thresholds, class quotas
    prior      Saerens-Latinne-Decaestecker EM for the class prior of the unlabelled pool, and the
               posterior reweighting from the training prior to a target prior (the "prior-knowledge" vote)
    semi       the whole pipeline (rounds, the vote, scores, submission, reports)
    thresholds the pseudo-label thresholds' sensitivity: thresholds x budgets retrained as one population
    robust     the round-0 ensemble under modality failures (a feature absent, noisy), one compiled program

`SYSTEM.build_task(config)` takes a trial config (`task.trial_config`: the recipe with one model's config and
the data's feature facts); the recipe is `experiments/configs/agt_mer.py`, the run `python -m experiments.agt_mer`,
the threshold sweep `python -m experiments.agt_thresholds`, the failure sweep `python -m experiments.agt_robustness`.
"""

from jaxemo.systems.agt import cv, data, prior, robust, selftrain, semi, task, thresholds
from jaxemo.systems.agt.task import build_task, flops, trial_config
from jaxemo.systems.base import GpuRun, System

__all__ = ["cv", "data", "prior", "robust", "selftrain", "semi", "task", "thresholds", "build_task", "flops", "trial_config", "SYSTEM"]

SYSTEM = System(
    name="agt",
    title="AGT for MER2024 MER-SEMI (Shi & Gao, MRAC 2024)",
    configs=("agt_mer",),
    build_task=build_task,
    flops=flops,
    workloads=(
        GpuRun("agt", "benchmarks.agt_pipeline",
               ("--paper_dims", "--train_size=5000", "--hidden=128", "--draws=6", "--epochs=2", "--rounds=1",
                "--per_round=2000", "--no_torch"), ("--tiny",), 30,
               "the MER-SEMI folds x draws x rounds trainings at MER2024's feature sizes, population groups vs "
               "fold by fold"),
    ),
)
