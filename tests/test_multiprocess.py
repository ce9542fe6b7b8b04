"""Two JAX processes over loopback (`jax.distributed`, gloo CPU collectives) train exactly like one.

`tests/multiprocess_worker.py` runs in (a) one process with 4 CPU devices and (b) two processes with 2 CPU
devices each (4 global devices, joined through `sharding.maybe_initialize_distributed()`). Each run gathers
the pipeline's first global batch, runs `loop.train_and_evaluate` (5 steps of a tiny ViT) on a
`data=2 x fsdp=2` mesh with Orbax checkpoints and resumes it from the second-newest checkpoint, then a
population of 4 trials spread over the 4 devices. The batch, per-step losses, final params, eval metrics,
checkpoints and the population's results of (b) must match those of (a). (The worker's bare train steps on
a `data` mesh, `--meshes=data`, are left out: the loop's data axis already spans the two processes.)

Marked `slow` (it still runs in the default suite): about 27 s of CPU per process, 60-80 s on 2 cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
STEPS = 5
TIMEOUT_S = 360  # generous: a hang (a process waiting on a dead peer) fails instead of blocking the suite
TOL = {"rtol": 1e-5, "atol": 1e-5}
LEARNING_RATE = 2e-3  # set by the worker's config
# Parameters whose gradient is zero in exact arithmetic: a key bias adds the same amount to every attention
# logit of a query, which the softmax ignores. Their gradient is float32 rounding noise (~1e-9, as small as
# Adam's eps) that Adam rescales into steps of up to the learning rate, so their values are noise that
# depends on the order of the reductions (4 devices in one process vs gloo across two; seen: 6e-6 after
# 5 steps). They cannot influence anything else, and are only checked against Adam's step bound.
ZERO_GRADIENT_PARAMS = ("attn/key/bias",)
# Variables that would make a worker join a cluster that the test did not ask for, or change its devices.
_UNWANTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES",
                 "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_CPU_DEVICES", "XLA_FLAGS")

pytestmark = pytest.mark.slow  # multi-process: two Python processes joined by jax.distributed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(name: str, num_processes: int, devices_per_process: int, root) -> dict:
    """Launches the worker processes of one run; their output goes to files (no pipe can fill up)."""
    run_dir = root / name
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _UNWANTED_ENV}
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port() if num_processes > 1 else 0
    procs = []
    for process_id in range(num_processes):
        log = open(run_dir / f"process{process_id}.log", "w")  # noqa: SIM115 (closed by _wait)
        cmd = [sys.executable, WORKER, f"--process_id={process_id}", f"--num_processes={num_processes}",
               f"--port={port}", f"--devices_per_process={devices_per_process}", f"--steps={STEPS}",
               f"--out={run_dir / 'result.npz'}", f"--workdir={run_dir / 'workdir'}",
               f"--cache_dir={run_dir / 'xla_cache'}", "--meshes="]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run_dir), log))
    return {"name": name, "dir": run_dir, "procs": procs}


def _wait(runs: list[dict], timeout: float) -> None:
    """Waits for every process. A process that fails gets its run's other processes killed at once (they
    would wait for it in a collective); at the deadline every straggler is killed. Fails with the logs."""
    deadline = time.monotonic() + timeout
    failures = []
    while True:
        running = 0
        for run in runs:
            codes = [proc.poll() for proc, _ in run["procs"]]
            if any(code not in (None, 0) for code in codes):
                for proc, _ in run["procs"]:
                    if proc.poll() is None:
                        proc.kill()
            running += sum(code is None for code in codes)
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for run in runs:
        for process_id, (proc, log) in enumerate(run["procs"]):
            if proc.poll() is None:
                proc.kill()
                failures.append(f"{run['name']} process {process_id}: still running after {timeout:.0f}s; killed")
            elif proc.returncode != 0:
                failures.append(f"{run['name']} process {process_id}: exit code {proc.returncode}")
            proc.wait()
            log.close()
    if failures:
        logs = []
        for run in runs:
            for process_id in range(len(run["procs"])):
                text = (run["dir"] / f"process{process_id}.log").read_text(errors="replace")
                logs.append(f"----- {run['name']} process {process_id} (last 6000 chars) -----\n{text[-6000:]}")
        pytest.fail("\n".join(failures) + "\n" + "\n".join(logs), pytrace=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"one": results of 1 process x 4 devices, "two": results of 2 processes x 2 devices}."""
    root = tmp_path_factory.mktemp("multiprocess")
    started = time.perf_counter()
    launched = [_start("one", 1, 4, root), _start("two", 2, 2, root)]  # concurrently: both are CPU-bound
    try:
        _wait(launched, TIMEOUT_S)
    finally:  # also on Ctrl-C: leave no worker behind
        for run in launched:
            for proc, _ in run["procs"]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    print(f"multi-process runs took {time.perf_counter() - started:.1f}s")
    results = {}
    for run in launched:
        with np.load(run["dir"] / "result.npz") as data:
            results[run["name"]] = {k: data[k] for k in data.files}
        results[run["name"]]["workdir"] = run["dir"] / "workdir"
    return results


def _params(result: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}


def _assert_trees_close(actual: dict, expected: dict, what: str, exact_only: bool = False, **tol) -> None:
    """`actual` == `expected` within `tol` (default TOL) for every parameter; with `exact_only=False` the
    ZERO_GRADIENT_PARAMS only have to stay within Adam's reach of each other."""
    assert sorted(actual) == sorted(expected), f"{what}: different parameter names"
    assert expected, f"{what}: no parameters"
    for name, want in expected.items():
        got = actual[name]
        if not exact_only and name.endswith(ZERO_GRADIENT_PARAMS):
            assert got.shape == want.shape and np.all(np.isfinite(got)), f"{what}: {name}"
            np.testing.assert_allclose(got, want, rtol=0, atol=4 * STEPS * LEARNING_RATE, err_msg=f"{what}: {name}")
            continue
        np.testing.assert_allclose(got, want, err_msg=f"{what}: {name}", **(tol or TOL))


def _logged(workdir, key: str) -> dict:
    """{step: value} of `key` in the run's metrics.jsonl (written by process 0 only)."""
    import json

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record[key] for record in map(json.loads, lines) if key in record}


def test_two_processes_see_the_same_global_batches(runs):
    one, two = runs["one"], runs["two"]
    assert len(one["loop/batch0_labels"]) == 16  # the worker's global batch
    np.testing.assert_array_equal(two["loop/batch0_labels"], one["loop/batch0_labels"])


def test_train_loop_on_fsdp_mesh_matches_one_process(runs):
    one, two = runs["one"], runs["two"]
    assert int(one["loop/steps_run"]) == int(two["loop/steps_run"]) == STEPS
    _assert_trees_close(_params(two, "loop/param/"), _params(one, "loop/param/"), "train loop, fsdp mesh")
    # The comparison is not vacuous: the params moved away from their initial values.
    assert not np.allclose(one["loop/param/head/kernel"], 0.0)
    eval_one, eval_two = _params(one, "loop/eval/"), _params(two, "loop/eval/")
    assert sorted(eval_one) == sorted(eval_two) and "loss" in eval_one
    for name in eval_one:
        np.testing.assert_allclose(eval_two[name], eval_one[name], err_msg=f"eval/{name}", **TOL)
    losses_one, losses_two = _logged(one["workdir"], "train/loss"), _logged(two["workdir"], "train/loss")
    assert sorted(losses_one) == sorted(losses_two) and STEPS in losses_one, (losses_one, losses_two)
    for step in losses_one:
        np.testing.assert_allclose(losses_two[step], losses_one[step], err_msg=f"train/loss at {step}", **TOL)


def test_resume_in_two_processes_reproduces_the_run(runs):
    for name in ("one", "two"):
        result = runs[name]
        assert int(result["loop/resumed_steps_run"]) == 1, name  # resumed from step STEPS - 1
        _assert_trees_close(_params(result, "loop/resumed_param/"), _params(result, "loop/param/"),
                            f"{name}: resumed run", exact_only=True, rtol=0, atol=1e-6)


def test_checkpoints_written_by_two_processes(runs):
    from flax import traverse_util

    from jaxemo.train import checkpoint

    directory = runs["two"]["workdir"] / "checkpoints"
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    assert STEPS in steps and STEPS - 1 in steps, steps
    for step in steps:
        assert (directory / str(step) / "commit_success.txt").exists() or \
            (directory / str(step) / "_CHECKPOINT_METADATA").exists(), f"checkpoint {step} is incomplete"
    # Each process wrote its own shards of the params (fsdp-sharded) into the shared directory.
    written = sorted(p.name for p in (directory / str(STEPS) / "params").glob("ocdbt.process_*"))
    assert written == ["ocdbt.process_0", "ocdbt.process_1"], written

    def load(name):
        params = checkpoint.load_params(str(runs[name]["workdir"] / "checkpoints"))  # the newest: STEPS
        return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}

    loaded_two = load("two")
    # The newest checkpoint is the resumed run's final one.
    _assert_trees_close(loaded_two, _params(runs["two"], "loop/resumed_param/"),
                        "params read back from the checkpoint", exact_only=True, rtol=0, atol=0)
    _assert_trees_close(loaded_two, load("one"), "checkpoints of two processes vs one")
    assert (runs["two"]["workdir"] / "config.json").exists()


def test_population_trials_spread_over_two_processes(runs):
    """Population training with its trials axis over 4 devices of 2 processes (two trials each) gives what
    one process with 4 devices gives: the same early-stopping steps, metrics and best params."""
    one, two = runs["one"], runs["two"]
    for key in ("steps_run", "best_step"):
        np.testing.assert_array_equal(two[f"population/{key}"], one[f"population/{key}"], err_msg=key)
    for key in ("best_value", "eval/loss", "test/accuracy"):
        np.testing.assert_allclose(two[f"population/{key}"], one[f"population/{key}"], err_msg=key, **TOL)
    params_one = _params(one, "population/param/")
    assert next(iter(params_one.values())).shape[0] == 4  # the trials axis
    _assert_trees_close(_params(two, "population/param/"), params_one, "population best params")
