"""`python -m experiments.uniemox` end to end on synthetic scenes: the teacher, pretraining (all three held-out
losses fall), fine-tuning from the pretrained encoder and from random weights, results.json, and a rerun that
resumes every finished stage to the same results."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {
    "model.width": 32, "model.depth": 2, "model.num_heads": 2, "model.mlp_dim": 64, "model.decoder_width": 16,
    "model.decoder_depth": 1, "teacher.vision_width": 32, "teacher.vision_depth": 1, "teacher.vision_mlp_dim": 64,
    "teacher.embed_dim": 16, "teacher.text_width": 16, "teacher.text_depth": 1, "teacher.train.num_epochs": 2,
    "data.train_size": 512, "data.eval_size": 64, "pretrain.num_epochs": 2, "finetune.train.num_epochs": 2,
    "finetune.synthetic.train_size": 64, "finetune.synthetic.eval_size": 64,
}


def _run(*args, timeout=900):
    # every program cached, even those under JAX's 1 s threshold: the rerun loads them all
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    result = subprocess.run([sys.executable, "-m", "experiments.uniemox", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uniemox"))
    out = _run(f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in SMALL.items()])
    return workdir, out


def test_the_pipeline_pretrains_then_fine_tunes_from_both_starts(run):
    workdir, out = run
    results = json.load(open(os.path.join(workdir, "results.json")))
    data = results["pretrain_data"]
    assert data["elements"] == 512 + 64 and 0 < data["without_person"] < data["elements"]  # train + val splits
    for name in ("reconstruction", "similarity", "contrastive"):
        assert results["pretrain"]["end"][name] < results["pretrain"]["start"][name], name
        assert f"pretraining {name:>14}:" in out
    tuned = results["finetune"]["synthetic_scenes"]
    assert set(tuned) == {"pretrained", "random"}
    for start in tuned.values():
        assert 0.0 <= start["test"]["accuracy"] <= start["test"]["top3_accuracy"] <= 1.0
        assert start["best_val"]["metric"] == "accuracy"
    assert "fine-tune synthetic_scenes from pretrained: test top-1" in out
    for folder in ("teacher/tokenizer.json", "teacher/checkpoints", "pretrain/checkpoints",
                   "finetune/synthetic_scenes/random/checkpoints_best"):
        assert os.path.exists(os.path.join(workdir, folder)), folder
    assert len(os.listdir(os.path.join(workdir, "text_features"))) == 1


def test_a_rerun_resumes_every_stage_to_the_same_results(run):
    workdir, _ = run
    before = json.load(open(os.path.join(workdir, "results.json")))
    out = _run(f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in SMALL.items()])
    after = json.load(open(os.path.join(workdir, "results.json")))
    assert after["finetune"] == before["finetune"] and after["pretrain"] == before["pretrain"]
    assert "fine-tune synthetic_scenes from random" in out
