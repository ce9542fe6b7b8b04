"""AGT's pseudo-label thresholds: precision, coverage per class and the final weighted F1 against the threshold.

    python -m experiments.agt_mer && python -m experiments.agt_thresholds       # reuses the run's round 0
    python -m experiments.agt_thresholds --thresholds=0.5,0.7,0.9 --per_round=450,0 \
        --config.self_training.threshold_mode=fixed

Round 0 is read back from (or trained into) the recipe run's workdir (`--workdir`, default
`runs/agt_mer-<variant>`); every threshold x budget retrains the models' best draws in one population per model
shape (`jaxemo.systems.agt.thresholds`). Writes `thresholds.csv`, `thresholds.json` and `thresholds.png` to
`--output` (default `<workdir>/thresholds`).
"""

from __future__ import annotations

import os

from absl import flags

from experiments import cli
from jaxemo.systems.agt import thresholds


def define_flags() -> None:
    cli.define_experiment_flags("agt_mer", "tiny, paper, ablation")
    flags.DEFINE_list("thresholds", [str(t) for t in thresholds.DEFAULT_THRESHOLDS], "pseudo-label thresholds")
    flags.DEFINE_list("per_round", [], "per-round budgets, 0 for none (default: the config's "
                      "self_training.per_round and 0)")
    flags.DEFINE_string("output", None, "where thresholds.{csv,json,png} go (default: <workdir>/thresholds)")


def run(config, workdir: str, output: str | None = None, threshold_values=thresholds.DEFAULT_THRESHOLDS,
        per_rounds=None, mesh=None) -> dict:
    os.makedirs(workdir, exist_ok=True)
    budgets = [int(n) for n in per_rounds] if per_rounds else None
    return thresholds.run(config, workdir, output or os.path.join(workdir, "thresholds"),
                          [float(t) for t in threshold_values], budgets, mesh)


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("agt_mer")
    f = flags.FLAGS
    output = f.output or os.path.join(workdir, "thresholds")
    results = run(config, workdir, output, f.thresholds, f.per_round)
    known = "pool_weighted_f1" in results["settings"][0]
    print(f"{'threshold':>9s} {'budget':>6s} {'added':>5s} {'coverage':>8s} {'precision':>9s} {'OOF prec':>8s} "
          f"{'CV wF1':>6s}" + (f" {'pool wF1':>8s} {'final wF1':>9s}" if known else ""))
    for r in results["settings"]:
        precision = f"{r['precision']:9.3f}" if r.get("precision") is not None else f"{'-':>9s}"
        oof = f"{r['oof_precision']:8.3f}" if r["oof_precision"] is not None else f"{'-':>8s}"
        line = (f"{r['threshold']:9.2f} {r['per_round'] or 'none':>6} {r['added']:5d} {r['coverage']:8.3f} "
                f"{precision} {oof} {r['cv_weighted_f1']:6.3f}")
        if known:
            line += f" {r['pool_weighted_f1']:8.3f} {r['pool_final_weighted_f1']:9.3f}"
        print(line)
    s = results["supervised"]
    print(f"round 0: CV weighted F1 {s['cv_weighted_f1']:.3f}" + (
        f", pool {s['pool_weighted_f1']:.3f}, final vote {s['pool_final_weighted_f1']:.3f}" if known else ""))
    print(f"table and plot in {output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
