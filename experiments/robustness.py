"""A trained checkpoint under modality failures: every failure x modality x severity, one compiled program.

    python -m experiments.mma_dfer && python -m experiments.robustness --system=mma_dfer \
        --checkpoint=runs/mma_dfer-tiny/fold1/checkpoints_best --fold=1
    python -m experiments.casp && python -m experiments.robustness --system=casp \
        --checkpoint=runs/casp-tiny/source/checkpoints_best

Each modality of the system (`SYSTEM.robustness`) in turn is absent (zeros), noisy (Gaussian, at each
`--snr_db`) or loses a fraction of its frames (each `--dropout`), per example, reproducibly from `--seed`
(`jaxemo.train.robustness`); the clean score comes first. The model and data come from the config stored in
the checkpoint (`--config_override=field=value` changes any of it, e.g. where a dataset lives). Writes
`robustness.csv`, `robustness.json` (every metric of every point) and `robustness.png` (`--metric`, default the
system's, against severity per modality) to `--output` (default: `robustness/` beside the run's checkpoints).
"""

from __future__ import annotations

import os
import time

from absl import flags

from experiments import cli
from jaxemo import systems
from jaxemo.train import checkpoint, robustness, sharding


def define_flags() -> None:
    """The command line's flags (defined when run as a program, so the module imports beside the others)."""
    flags.DEFINE_string("system", None, "a multimodal system of the registry", required=True)
    flags.DEFINE_string("checkpoint", None, "a run's checkpoint directory, or one step's directory", required=True)
    flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
    flags.DEFINE_integer("fold", 1, "the fold whose test split to evaluate, where the system has folds")
    flags.DEFINE_list("snr_db", [str(s) for s in robustness.DEFAULT_SNR_DB], "noise levels, SNR in dB")
    flags.DEFINE_list("dropout", [str(f) for f in robustness.DEFAULT_DROPOUT], "fractions of frames dropped")
    flags.DEFINE_list("kinds", list(robustness.KINDS), "failure kinds")
    flags.DEFINE_integer("seed", 0, "seed of the per-example noise and dropped frames")
    flags.DEFINE_string("metric", None, "the metric plotted (default: the system's)")
    flags.DEFINE_string("output", None, "where robustness.{csv,json,png} go (default: <run>/robustness)")
    flags.DEFINE_multi_string("config_override", [], "field=value, applied to the stored config")


def run(system_name: str, checkpoint_path: str, output: str, *, step=None, fold: int = 1,
        snr_db=robustness.DEFAULT_SNR_DB, dropout=robustness.DEFAULT_DROPOUT, kinds=robustness.KINDS,
        seed: int = 0, metric=None, overrides=(), mesh=None) -> dict:
    """The sweep of one checkpoint: {"rows": one per failure point, "paths": the files written, ...}."""
    system = systems.get(system_name)
    spec = system.robustness
    if spec is None:
        multimodal = [s.name for s in systems.all_systems() if s.robustness is not None]
        raise ValueError(f"system {system_name!r} declares no modalities to fail; these do: {multimodal}")
    config = cli.stored_config(checkpoint_path, step)
    cli.apply_overrides(config, overrides)
    params = checkpoint.load_params(checkpoint_path, step=step)
    points = robustness.failure_grid(spec.modalities, [float(s) for s in snr_db], [float(f) for f in dropout],
                                     kinds)
    if mesh is None:
        try:
            mesh = sharding.make_mesh(dict(config.mesh))
        except ValueError as error:
            raise ValueError(f"{error}: the checkpoint's run was trained on another mesh; evaluate on this "
                             f"machine's devices with --config_override=mesh.fsdp=1 (and mesh.tensor=1)") from None
    source = spec.eval_source(config, fold)
    start = time.perf_counter()
    rows = robustness.sweep(config, system.build_task(config), params, source, spec.modalities, points, seed=seed,
                            mesh=mesh)
    seconds = time.perf_counter() - start
    metric = metric or spec.metric
    paths = robustness.write_results(rows, output, metric, f"{system.title}: {checkpoint_path}")
    later = sum(row["seconds"] for row in rows[1:])
    return {"rows": rows, "paths": paths, "metric": metric, "seconds": seconds, "points": len(points),
            "samples": len(points) * len(source), "first_point_s": rows[0]["seconds"],
            "samples_per_s_after_first": (len(points) - 1) * len(source) / later if later else float("nan")}


def main(argv):
    del argv
    f = flags.FLAGS
    run_dir = os.path.dirname(os.path.dirname(checkpoint.step_directory(f.checkpoint, f.step)))
    output = f.output or os.path.join(run_dir, "robustness")
    result = run(f.system, f.checkpoint, output, step=f.step, fold=f.fold, snr_db=f.snr_db, dropout=f.dropout,
                 kinds=f.kinds, seed=f.seed, metric=f.metric, overrides=f.config_override)
    metric = result["metric"]
    print(f"{'failure':36s} {metric:>8s}")
    for row in result["rows"]:
        label = "clean" if row["kind"] == "clean" else f"{row['modality']} {row['kind']} {row['severity']:g}"
        print(f"{label:36s} {row[metric]:8.4f}")
    print(f"{result['points']} failure points, {result['samples']:,} samples in {result['seconds']:.1f} s "
          f"({result['samples'] / result['seconds']:,.0f} samples/s with reading and compiling; the first point "
          f"{result['first_point_s']:.1f} s, the others {result['samples_per_s_after_first']:,.0f} samples/s); "
          f"{result['rows'][0]['compiles']} compiled evaluation program(s); table and plot in {output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
