"""Checkpoints: kill-and-resume equals an uninterrupted run, SIGTERM saves, corrupt checkpoints fall back,
restores land on another mesh, and code that never imports jaxemo reads the params with Orbax alone."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxemo.systems import vit_classifier
from jaxemo.train import checkpoint as checkpoint_lib
from jaxemo.train import loop, sharding, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 80
RUN_OVERRIDES = [
    "--config.model.width=32", "--config.model.depth=2", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
    "--config.data.train_size=512", "--config.data.eval_size=64", "--config.batch_size=16",
    "--config.eval_batch_size=32", f"--config.total_steps={TOTAL_STEPS}", "--config.checkpoint.every_steps=10",
    "--config.log_every_steps=10", "--config.eval_every_steps=0",
]


def _launch(workdir):
    command = [sys.executable, "-m", "experiments.vit_classifier",
               "--config=experiments/configs/vit_classifier.py:tiny", *RUN_OVERRIDES, f"--workdir={workdir}"]
    # Every program goes to the suite's compilation cache, even those that compile in under a second (JAX's
    # default threshold): the seven runs of this module then compile the tiny model once.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    # A child of a non-interactive shell may inherit SIGINT as ignored; Ctrl-C must reach the run.
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore_sigint)


def _finish(process, timeout=240):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{err[-3000:]}"
    return out, err


def _committed_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(n) for n in os.listdir(path)
                  if n.isdigit() and os.path.exists(os.path.join(path, n, "_CHECKPOINT_METADATA")))


def _wait_for_checkpoint(process, workdir, after=0, timeout=180):
    """Until a checkpoint newer than step `after` is committed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _committed_steps(workdir) and _committed_steps(workdir)[-1] > after:
            return
        assert process.poll() is None, f"run ended before its first checkpoint:\n{process.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint appeared in {workdir}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _finish(_launch(workdir))
    return checkpoint_lib.load_params(os.path.join(workdir, "checkpoints"))


def _assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_killed_then_preempted_twice_resumes_to_the_same_params(uninterrupted, tmp_path):
    """One run stopped three ways in turn, each resumed by the same command: SIGKILL (nothing saved: it resumes
    from the last periodic checkpoint), then SIGTERM and Ctrl-C (each saves the step it reached). It ends with
    the params of the run that was never interrupted. (One chain: five runs of the CLI instead of seven.)"""
    workdir = str(tmp_path / "interrupted")
    process = _launch(workdir)
    _wait_for_checkpoint(process, workdir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last = _committed_steps(workdir)[-1]
    assert last < TOTAL_STEPS, "the run finished before it could be killed"
    for signum in (signal.SIGTERM, signal.SIGINT):
        name = signal.Signals(signum).name
        process = _launch(workdir)
        _wait_for_checkpoint(process, workdir, after=last)
        process.send_signal(signum)
        _, err = _finish(process)
        assert f"resumed from {os.path.join(workdir, 'checkpoints')} at step {last}" in err, (name, err[-3000:])
        saved = re.search(r"preemption signal: saved step (\d+)", err)
        assert saved, (name, err[-3000:])
        last = _committed_steps(workdir)[-1]
        assert last == int(saved.group(1)) < TOTAL_STEPS, (name, last)
    _, err = _finish(_launch(workdir))
    assert f"at step {last}" in err and _committed_steps(workdir)[-1] == TOTAL_STEPS
    _assert_same_params(checkpoint_lib.load_params(os.path.join(workdir, "checkpoints")), uninterrupted)


def _trainer(tiny_config, mesh):
    config = tiny_config()
    task = tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)
    train_source, _ = vit_classifier.build_data(config)
    return loop.Trainer(config, task, train_source, mesh=mesh)


def _save_steps(trainer, directory, steps):
    ckpt = checkpoint_lib.Checkpointer(directory, save_every=1, keep=5)
    state = trainer.init_state()
    for step in steps:
        state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))
        ckpt.save(step, state, {"next_index": step}, {"note": "test"}, force=True)
    ckpt.wait()
    return ckpt, state


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tiny_config, tmp_path, caplog):
    trainer = _trainer(tiny_config, sharding.make_mesh({"data": 8}))
    directory = str(tmp_path / "checkpoints")
    ckpt, _ = _save_steps(trainer, directory, [1, 2])
    for root, _, files in os.walk(os.path.join(directory, "2", "params")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING):
        state, data_state = ckpt.restore_latest(trainer.abstract)
    assert int(state.step) == 1 and data_state == {"next_index": 1}
    assert re.search(rf"checkpoint {re.escape(directory)}/2 is unreadable .*falling back", caplog.text)
    assert os.listdir(directory + "_corrupt")  # moved aside, not deleted
    ckpt.save(2, state, {"next_index": 2}, {}, force=True)  # the step can be written again
    ckpt.wait()


def test_restore_onto_a_different_mesh(tiny_config, tmp_path):
    saved_on = _trainer(tiny_config, sharding.make_mesh({"data": 4, "fsdp": 2}))
    ckpt, saved_state = _save_steps(saved_on, str(tmp_path / "checkpoints"), [3])
    restored_on = _trainer(tiny_config, sharding.make_mesh({"data": 1, "fsdp": 8}))
    state, _ = ckpt.restore_latest(restored_on.abstract)
    kernel = state.trainable["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.mesh.shape["fsdp"] == 8 and kernel.sharding.spec[1] == "fsdp"
    _assert_same_params(state.params, saved_state.params)
    _assert_same_params(state.opt_state, saved_state.opt_state)


def test_load_params_returns_a_plain_dict(tiny_config, tmp_path):
    trainer = _trainer(tiny_config, sharding.make_mesh({"data": 8}))
    _, state = _save_steps(trainer, str(tmp_path / "checkpoints"), [5])
    params = checkpoint_lib.load_params(str(tmp_path / "checkpoints"))
    assert type(params) is dict and type(params["encoder"]) is dict
    _assert_same_params(params, state.params)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint_lib.load_params(str(tmp_path / "missing"))


def _readme_snippet(name):
    text = open(os.path.join(REPO, "README.md")).read()
    match = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no '{name}' snippet"
    return match.group(1)


def test_readme_orbax_only_restore_runs_without_jaxemo(tiny_config, tmp_path):
    trainer = _trainer(tiny_config, sharding.make_mesh({"data": 8}))
    _, state = _save_steps(trainer, str(tmp_path / "checkpoints"), [7])
    script = _readme_snippet("orbax-restore") + (
        "\nimport sys\nassert not any(m.startswith('jaxemo') for m in sys.modules)\n"
        "flat = jax.tree_util.tree_flatten_with_path(params)[0]\n"
        "np.savez(sys.argv[2], **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})\n")
    out = tmp_path / "params.npz"
    step_dir = str(tmp_path / "checkpoints" / "7")
    result = subprocess.run([sys.executable, "-c", script, step_dir, str(out)], cwd=str(tmp_path),
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = np.load(out)
    expected = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    assert len(loaded.files) == len(expected)
    for path, value in expected:
        np.testing.assert_array_equal(loaded[jax.tree_util.keystr(path)], value)
