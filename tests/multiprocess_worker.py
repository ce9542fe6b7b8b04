"""One process of a (possibly multi-process) CPU training run; launched by `tests/test_multiprocess.py`.

    python tests/multiprocess_worker.py --process_id=0 --num_processes=2 --port=12345 \
        --devices_per_process=2 --steps=5 --out=/tmp/result.npz [--workdir=/tmp/loop]

With `--num_processes > 1` the processes join through `jaxemo.train.sharding.maybe_initialize_distributed()`
(JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, over loopback; CPU collectives use gloo).
For every mesh in `--meshes` the worker builds a tiny ViT classifier, runs `--steps` jitted train steps on
batches from `pipeline.train_dataset` placed with `sharding.shard_batch`, and gathers the final params on
every process. With `--workdir` it also runs the whole `loop.train_and_evaluate` job there on
`--loop_mesh` (Orbax checkpoints written by all processes), deletes the newest checkpoint and runs the
job again, which resumes from the one before. Process 0 writes the per-step losses and the flattened
params of each run to `--out`. Standalone: it does not rely on pytest or `tests/conftest.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# mesh name -> mesh axes; every one spans all global devices (4 in the test).
MESHES = {"data": {"data": -1}, "data_fsdp": {"data": 2, "fsdp": -1}}
GLOBAL_BATCH = 16


_T0 = (time.perf_counter(), time.process_time())


def log(message: str) -> None:
    """A progress line with the wall and CPU seconds since start (stdout; the test keeps it in a log)."""
    wall, cpu = time.perf_counter() - _T0[0], time.process_time() - _T0[1]
    print(f"[{wall:6.1f}s wall {cpu:6.1f}s cpu] {message}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (multi-process)")
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", required=True, help=".npz written by process 0")
    parser.add_argument("--workdir", default=None, help="also run loop.train_and_evaluate here")
    parser.add_argument("--cache_dir", default=None,
                        help="persistent XLA cache shared by the processes of a run (the resumed loop reuses "
                             "the compiled steps instead of compiling them again)")
    parser.add_argument("--meshes", default="data", help="comma-separated MESHES for the bare train steps")
    parser.add_argument("--loop_mesh", default="data_fsdp", choices=sorted(MESHES), help="mesh of the loop run")
    return parser.parse_args(argv)


def setup_jax(args):
    """CPU devices and, for several processes, the library's own distributed initialisation."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    # Unoptimised CPU code compiles about twice as fast; every run of the comparison uses the same flags.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    if args.num_processes > 1:
        os.environ["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{args.port}"
        os.environ["JAX_NUM_PROCESSES"] = str(args.num_processes)
        os.environ["JAX_PROCESS_ID"] = str(args.process_id)
    sys.path.insert(0, REPO_ROOT)

    import jax

    jax.config.update("jax_num_cpu_devices", args.devices_per_process)
    if args.cache_dir:  # JAX writes entries from process 0 only (keys differ per process): it alone reuses them
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from jaxemo.train import sharding

    sharding.maybe_initialize_distributed()
    expected = args.num_processes * args.devices_per_process
    if jax.process_count() != args.num_processes or jax.device_count() != expected:
        raise RuntimeError(f"expected {args.num_processes} processes with {expected} devices in all, got "
                           f"{jax.process_count()} processes, {jax.device_count()} devices")
    return jax


def tiny_config(steps: int, mesh_axes: dict):
    from experiments.configs import vit_classifier as vit_config

    config = vit_config.get_config("tiny")
    config.model.update(depth=1, width=32, num_heads=2, mlp_dim=64, image_size=16)
    config.data.update(train_size=256, eval_size=40)
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh_axes})
    config.batch_size = GLOBAL_BATCH
    config.eval_batch_size = 16  # 40 examples: the last eval batch is padded and masked
    config.total_steps = steps
    # AdamW at 2e-3 (tests/test_multiprocess.py assumes it), the full rate from step 1 on: every loss after
    # the first differs from the one before.
    config.optimizer.update(name="adamw", learning_rate=2e-3, schedule="warmup_cosine", warmup_steps=0)
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint.update(every_steps=2, keep=5, async_save=True)
    return config


def gather(jax, tree) -> dict:
    """Flattened `{"a/b/c": numpy}` of a tree of global (possibly sharded) arrays, on every process."""
    import numpy as np
    from flax import traverse_util
    from jax.experimental import multihost_utils

    host = multihost_utils.process_allgather(tree, tiled=True)
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(host).items()}


def run_steps(jax, mesh_name: str, steps: int) -> dict:
    """`steps` jitted train steps on `mesh_name`: {"losses": [steps], "param/...": arrays}."""
    import numpy as np

    from jaxemo.systems import vit_classifier
    from jaxemo.data import pipeline
    from jaxemo.train import optim, sharding, tasks
    from jaxemo.train import state as state_lib
    from jaxemo.train import step as step_lib

    config = tiny_config(steps, MESHES[mesh_name])
    mesh = sharding.make_mesh(MESHES[mesh_name])
    sharding.check_batch_size(config.batch_size, mesh)
    task = tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)
    train_source, _ = vit_classifier.build_data(config)
    optimizer = optim.make_optimizer(config.optimizer, steps, len(train_source) // config.batch_size)
    batches = iter(pipeline.train_dataset(train_source, config.batch_size, config.seed))
    first = next(batches)
    if len(first["label"]) != config.batch_size // jax.process_count():
        raise RuntimeError(f"process {jax.process_index()} got {len(first['label'])} rows of batch 0")
    example = state_lib.example_batch_like(first)
    state, shardings = state_lib.create_train_state(task, optimizer.tx, example, jax.random.key(config.seed), mesh)
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, optimizer), shardings, mesh)
    losses, batch = [], first
    for _ in range(steps):
        state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
        losses.append(float(jax.device_get(metrics["loss"])))
        batch = next(batches)
    labels = gather(jax, {"labels": sharding.shard_batch(first, mesh)["label"]})["labels"]
    return {"losses": np.asarray(losses), "batch0_labels": labels,
            **{f"param/{k}": v for k, v in gather(jax, state.params).items()}}


def run_loop(jax, workdir: str, steps: int, mesh_name: str) -> dict:
    """`loop.train_and_evaluate` with Orbax checkpoints in `workdir`, written by every process; then the
    newest checkpoint is removed and the job is resumed from the one before, which must reproduce it."""
    import shutil

    import numpy as np
    from jax.experimental import multihost_utils

    from jaxemo.systems import vit_classifier
    from jaxemo.train import loop, tasks

    from jaxemo.data import pipeline
    from jaxemo.train import sharding

    config = tiny_config(steps, MESHES[mesh_name])
    task = tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)
    train_source, eval_source = vit_classifier.build_data(config)
    first = next(iter(pipeline.train_dataset(train_source, config.batch_size, config.seed)))
    if len(first["label"]) != config.batch_size // jax.process_count():
        raise RuntimeError(f"process {jax.process_index()} got {len(first['label'])} rows of batch 0")
    mesh = sharding.make_mesh(MESHES[mesh_name])
    labels = gather(jax, {"labels": sharding.shard_batch(first, mesh)["label"]})["labels"]  # the global batch
    result = loop.train_and_evaluate(config, workdir, task, train_source, eval_source)
    out = {"batch0_labels": labels, **{f"param/{k}": v for k, v in gather(jax, result.state.params).items()}}
    out.update({f"eval/{k}": np.asarray(v) for k, v in result.eval_metrics.items()})
    out["steps_run"] = np.asarray(result.steps_run)

    checkpoints = os.path.join(workdir, "checkpoints")
    if jax.process_index() == 0:
        shutil.rmtree(os.path.join(checkpoints, str(steps)))
    multihost_utils.sync_global_devices("multiprocess_worker_removed_last_checkpoint")
    log(f"loop: {result.steps_run} steps; resuming from step {steps - 1}")
    resumed = loop.train_and_evaluate(config, workdir, task, train_source, eval_source)
    out.update({f"resumed_param/{k}": v for k, v in gather(jax, resumed.state.params).items()})
    out["resumed_steps_run"] = np.asarray(resumed.steps_run)
    return out


def run_population(jax, workdir: str, steps: int) -> dict:
    """A population of 4 trials (their own seeds, data and learning rates, early stopping on validation loss)
    as one group over the 4 global devices: one trial per device, so two processes hold two trials each."""
    import numpy as np

    from jaxemo.data import synthetic
    from jaxemo.systems import vit_classifier
    from jaxemo.train import population, tasks

    config = tiny_config(steps, {"data": -1})
    config.eval_every_steps = 2
    config.best.update(metric="loss", mode="min", patience=1)
    config.population.group_size = 4
    task = tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)
    trials = [population.Trial(f"t{i}", seed=i, train=synthetic.SyntheticImages(64, image_size=16, seed=i),
                               eval=synthetic.SyntheticImages(20, image_size=16, seed=50 + i),
                               test=synthetic.SyntheticImages(12, image_size=16, seed=90 + i),
                               hyperparams={"learning_rate": 2e-3 * (i + 1)}) for i in range(4)]
    results = []
    rows = population.Population(config, task, trials).run(workdir, on_group=results.append)
    out = {f"population/param/{k}": v for k, v in gather(jax, results[0].selected).items()}
    for key in ("steps_run", "best_step", "best_value", "eval/loss", "test/accuracy"):
        out[f"population/{key}"] = np.asarray([row[key] for row in rows], np.float64)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    jax = setup_jax(args)
    import numpy as np

    log(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices in all")

    results = {}
    for name in filter(None, args.meshes.split(",")):
        for key, value in run_steps(jax, name, args.steps).items():
            results[f"{name}/{key}"] = value
        log(f"{args.steps} train steps on mesh {name!r}: losses {results[f'{name}/losses'].round(5).tolist()}")
    if args.workdir:
        for key, value in run_loop(jax, args.workdir, args.steps, args.loop_mesh).items():
            results[f"loop/{key}"] = value
        log(f"loop on mesh {args.loop_mesh!r}, checkpointed and resumed")
        results.update(run_population(jax, args.workdir + "_population", args.steps))
        log("population of 4 trials over the global devices")
    if jax.process_index() == 0:
        tmp = args.out + ".tmp.npz"
        np.savez(tmp, **results)
        os.replace(tmp, args.out)
    log("done")
    if args.num_processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
