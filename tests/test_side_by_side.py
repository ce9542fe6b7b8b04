"""The whole-workload comparisons against the released pipelines (`benchmarks.agt_round0`,
`benchmarks.fewshot_released`) run both sides on tiny shapes and write their sections (no timing asserted)."""

import jax
import pytest

pytestmark = pytest.mark.slow


def _profile_reads(printed: str, jaxemo: dict) -> None:
    """`benchmarks.profiles.host_cores` reads the jaxemo side's wall, compile and CPU seconds from its line."""
    from benchmarks.profiles import host_cores

    wall, compile_s, cpu_s = map(float, host_cores.REPORTED.search(printed).groups())
    assert wall == pytest.approx(jaxemo["seconds"], abs=0.06) and cpu_s == pytest.approx(jaxemo["cpu_s"], abs=0.06)
    assert compile_s == pytest.approx(jaxemo["compile_s"], abs=0.06) and cpu_s > 0


def test_agt_round0_runs_mertools_loop_and_the_population_on_the_same_trainings(tmp_path, capsys):
    from benchmarks import agt_round0

    path = tmp_path / "BENCHMARKS.md"
    result = agt_round0.main(["--tiny", "--write", f"--benchmarks_file={path}"])
    jaxemo, mertools = result["jaxemo"], result["mertools"]
    _profile_reads(capsys.readouterr().out, jaxemo)
    assert jaxemo["seconds"] > jaxemo["compile_s"] > 0 and mertools["seconds"] > 0
    assert set(mertools["parts"]) == {"train", "eval", "test"} and all(v > 0 for v in mertools["parts"].values())
    assert jaxemo["pool_logits"].shape == (200, 6)  # the pool scored from each fold's best params, averaged
    assert 0 <= jaxemo["cv_weighted_f1"] <= 1 and 0 <= mertools["cv_weighted_f1"] <= 1
    text = path.read_text()
    assert f"<!-- agt-round0-tiny-d1:{jax.default_backend()} begin -->" in text
    assert "| MERTools `main-release.py` loop (PyTorch" in text and "| jaxemo `cv.train_model`" in text
    mertools_projected, jaxemo_projected = agt_round0.projection(result)
    assert mertools_projected == pytest.approx(mertools["seconds"] * 100 / 2)
    assert jaxemo["compile_s"] < jaxemo_projected < jaxemo["seconds"] * 100 / 2


def test_fewshot_released_runs_the_trainer_per_trial_and_the_population(tmp_path, capsys):
    from benchmarks import fewshot_released

    path = tmp_path / "BENCHMARKS.md"
    result = fewshot_released.main(["--tiny", "--eval_conv_impl=xla", "--write", f"--benchmarks_file={path}"])
    jaxemo, released = result["jaxemo"], result["released"]
    _profile_reads(capsys.readouterr().out, jaxemo)
    assert jaxemo["trials"] == released["trials"] == 5  # one speaker x 5 target emotions
    assert released["epochs"] == [2.0] * 5 and jaxemo["steps_run"] == [2] * 5  # every epoch (k = 4: one step)
    assert jaxemo["seconds"] > jaxemo["compile_s"] > 0 and released["seconds"] > 0
    assert 0 <= jaxemo["test_macro_f1"] <= 1 and 0 <= released["test_macro_f1"] <= 1
    text = path.read_text()
    assert f"<!-- fewshot-released-tiny-d1:{jax.default_backend()} begin -->" in text
    assert "| released `Trainer` per trial (PyTorch, 1 thread) | 5 |" in text


def test_host_cores_reading():
    from benchmarks.profiles import host_cores

    one_core, one_device, two = ({"work_s": w} for w in (100.0, 60.0, 50.0))
    r = host_cores.reading(one_core, one_device, two, cores=2)
    # one device already runs 100/60 = 1.67x one core, so two devices can gain at most 60 / (100 / 2) = 1.2x
    assert r["one_device_use"] == pytest.approx(5 / 3) and r["ceiling"] == pytest.approx(1.2)
    assert r["measured_gain"] == pytest.approx(1.2)
