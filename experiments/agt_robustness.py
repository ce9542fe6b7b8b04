"""AGT under modality failures: the round-0 ensemble with one feature absent, noisy or losing frames.

    python -m experiments.agt_mer && python -m experiments.agt_robustness        # reuses the run's round 0
    python -m experiments.agt_mer --config.augment.modality_dropout=0.3 --workdir=runs/agt_dropout && \
        python -m experiments.agt_robustness --config.augment.modality_dropout=0.3 --workdir=runs/agt_dropout

Each model's best round-0 draw is trained again on its folds (the same seeds: the same params, checked) and
scored under every failure x feature x severity as its group finishes (`jaxemo.systems.agt.robust`). Writes
`robustness.csv`, `robustness.json` and `robustness.png` to `--output` (default `<workdir>/robustness`).
"""

from __future__ import annotations

import os

from absl import flags

from experiments import cli
from jaxemo.systems.agt import robust
from jaxemo.train import robustness


def define_flags() -> None:
    cli.define_experiment_flags("agt_mer", "tiny, paper, ablation")
    flags.DEFINE_list("snr_db", [str(s) for s in robustness.DEFAULT_SNR_DB], "noise levels, SNR in dB")
    flags.DEFINE_list("dropout", [str(f) for f in robustness.DEFAULT_DROPOUT], "fractions of frames dropped "
                      "(frame-level features only)")
    flags.DEFINE_list("kinds", list(robustness.KINDS), "failure kinds")
    flags.DEFINE_integer("seed", 0, "seed of the per-sample noise and dropped frames")
    flags.DEFINE_string("output", None, "where robustness.{csv,json,png} go (default: <workdir>/robustness)")


def run(config, workdir: str, output: str | None = None, **kwargs) -> dict:
    os.makedirs(workdir, exist_ok=True)
    return robust.run(config, workdir, output or os.path.join(workdir, "robustness"), **kwargs)


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("agt_mer")
    f = flags.FLAGS
    output = f.output or os.path.join(workdir, "robustness")
    result = run(config, workdir, output, snr_db=f.snr_db, dropout=f.dropout, kinds=f.kinds, seed=f.seed)
    known = "pool_weighted_f1" in result["rows"][0]
    print(f"{'failure':40s} {'OOF wF1':>8s}" + (f" {'pool wF1':>8s}" if known else ""))
    for row in result["rows"]:
        label = "clean" if row["kind"] == "clean" else f"{row['modality']} {row['kind']} {row['severity']:g}"
        print(f"{label:40s} {row['oof_weighted_f1']:8.4f}" + (f" {row['pool_weighted_f1']:8.4f}" if known else ""))
    print(f"{result['points']} failure points in {result['seconds']:.1f} s (retraining included); table and plot "
          f"in {output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
