"""Safe online adaptation on a stream that goes wrong: plain against monitored online CASP.

    python -m experiments.casp && python -m experiments.casp_stream \
        --checkpoint=runs/casp-tiny/source/checkpoints_best --degenerate=silent

The target's test split streams in order with its middle third degenerate (`--degenerate`: silent audio and
vision, a constant feed, or a label-skewed burst; `jaxemo.systems.casp.stream`). The source model, plain
online adaptation and the monitored one (`jaxemo.tta.monitor`: thresholds from the source's validation split,
skip or reset per batch) run on it with the same keys; `--mode=episodic` adapts each sample on its own
instead, with the per-sample rule (skip, or reject the update). Writes `stream.json` (MAE per segment and run,
the thresholds, the decisions), `audit.jsonl` (one line per batch or sample: signals, decision, thresholds,
its error) and `timeline.png` to `--output` (default `<run>/stream_<degenerate>`, `_episodic` appended).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
from absl import flags

from experiments import cli
from jaxemo.systems import casp
from jaxemo.systems.casp import stream as stream_lib
from jaxemo.train import checkpoint
from jaxemo.tta import core, monitor


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "the source model: `<run>/source/checkpoints_best` of "
                        "python -m experiments.casp", required=True)
    flags.DEFINE_enum("degenerate", "silent", stream_lib.DEGENERATE, "what goes wrong in the middle third")
    flags.DEFINE_enum("mode", "online", ["online", "episodic"], "online: the stream's batches in order; "
                      "episodic: each sample adapted on its own, the per-sample rule")
    flags.DEFINE_float("learning_rate", 0.02, "online adaptation's learning rate")
    flags.DEFINE_integer("steps", 3, "updates per incoming batch")
    flags.DEFINE_enum("reset_to", "snapshot", ["snapshot", "source"], "where a reset goes")
    flags.DEFINE_integer("seed", 0, "adaptation's random keys")
    flags.DEFINE_string("output", None, "default: <run>/stream_<degenerate>")
    flags.DEFINE_multi_string("config_override", [], "field=value, applied to the stored config")


def run(checkpoint_path: str, output: str, degenerate: str = "silent", learning_rate: float = 0.02,
        steps: int = 3, reset_to: str = "snapshot", seed: int = 0, overrides=(), mode: str = "online") -> dict:
    config = cli.stored_config(checkpoint_path, None)
    cli.apply_overrides(config, overrides)
    params = checkpoint.load_params(checkpoint_path)
    dims = {m: int(params[f"proj_{m}"]["kernel"].shape[0]) for m in core.MODALITIES}
    test = casp.target_arrays(config, config.target.test_split, dims)
    compare = stream_lib.compare if mode == "online" else stream_lib.compare_episodic
    result = compare(config, params, test, degenerate, learning_rate=learning_rate, steps=steps,
                     rng=jax.random.key(seed), monitor_config=monitor.MonitorConfig(reset_to=reset_to))
    os.makedirs(output, exist_ok=True)
    errors = {run: stream_lib.batch_errors(p, result["labels"], result["batch_size"])
              for run, p in result["predictions"].items()}
    audit = result["audit"]
    monitor.write_audit(audit, os.path.join(output, "audit.jsonl"), errors["monitored"])
    monitor.plot_timeline({"monitored": audit}, os.path.join(output, "timeline.png"), errors,
                          f"CASP {mode}, {degenerate} middle third, lr {learning_rate:g} x {steps} steps")
    summary = {"mode": mode, "degenerate": degenerate, "learning_rate": learning_rate, "steps": steps,
               "reset_to": reset_to,
               "mae": result["mae"], "decisions": audit.counts(),
               "thresholds": dataclasses.asdict(result["thresholds"])}
    with open(os.path.join(output, "stream.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return {**summary, "result": result}


def main(argv):
    del argv
    f = flags.FLAGS
    run_dir = os.path.dirname(os.path.dirname(checkpoint.step_directory(f.checkpoint, None)))
    suffix = "" if f.mode == "online" else "_episodic"
    output = f.output or os.path.join(os.path.dirname(run_dir), f"stream_{f.degenerate}{suffix}")
    summary = run(f.checkpoint, output, f.degenerate, f.learning_rate, f.steps, f.reset_to, f.seed,
                  f.config_override, f.mode)
    print(f"{'MAE':12s} " + " ".join(f"{s:>11s}" for s in stream_lib.SEGMENTS))
    for name, row in summary["mae"].items():
        print(f"{name:12s} " + " ".join(f"{row[s]:11.4f}" for s in stream_lib.SEGMENTS))
    print(f"monitor decisions {summary['decisions']}; audit log, timeline and stream.json in {output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
