"""AGT for MER2024 MER-SEMI: folds x hyperparameter draws as population groups, self-training, the prior vote.

    python -m experiments.agt_mer                                            # tiny, synthetic MER data
    python -m experiments.agt_mer --config=experiments/configs/agt_mer.py:paper \
        --config.data.manual_dir=/data/MER2024 --workdir=runs/agt_mer

Each round's populations keep their finished groups (and the trials' logits) under `<workdir>/round<r>/`, so
a rerun of the same command resumes. Results: `results.json`, `members.csv`, `draws.csv`,
`pseudo_labels.csv`, `confusion.png`, `submission.csv`, `predictions.npz` (`jaxemo.systems.agt.semi`).
"""

from __future__ import annotations

import os

import jax

from experiments import cli
from jaxemo.systems.agt import semi


def run(config, workdir: str, mesh=None) -> dict:
    os.makedirs(workdir, exist_ok=True)
    # Each round and model compiles its steps again (the schedule constants change with the training set).
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return semi.run(config, workdir, mesh)


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("agt_mer")
    results = run(config, workdir)
    for row in results["members"]:
        print(f"{row['member']}: CV weighted F1 {row['cv_weighted_f1']:.4f}, accuracy {row['cv_accuracy']:.4f}, "
              f"hyperparameters {row['hyperparams']}")
    for row in results["pseudo_labels"]:
        accuracy = f", accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
        print(f"round {row['round']}: {row['added']} pseudo-labels{accuracy}")
    if "target_prior" in results:
        t = results["target_prior"]
        error = f" (true {[round(p, 3) for p in t['true_pool_prior']]}, L1 error {t['l1_error']:.3f})" \
            if "l1_error" in t else ""
        print(f"target prior ({t['how']}): {[round(p, 3) for p in t['prior']]}{error}")
    if results["pool_scores"]:
        print(semi.format_table(results))
    print(f"results: {workdir}/results.json, members.csv, draws.csv, pseudo_labels.csv, confusion.png, "
          f"submission.csv")


if __name__ == "__main__":
    cli.define_experiment_flags("agt_mer", "tiny, paper, ablation")
    cli.run(main)
