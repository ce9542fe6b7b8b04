"""Few-shot SER with pre-finetuning: shot sampling, the multi-corpus source, the task, the population
protocol (vmapped trials equal one-at-a-time trials) and the experiment (resumes to the same table)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score

from experiments.configs import fewshot_ser as fewshot_config
from jaxemo.data import pipeline
from jaxemo.systems import speech_ser
from jaxemo.systems.speech_ser import corpora, fewshot, prefinetune
from jaxemo.train import metrics as metrics_lib
from jaxemo.train import optim, sharding


def small_config():
    """The tiny recipe shrunk for tests: 0.1 s clips, 2 speakers, 2 target emotions, k in (2, 4)."""
    config = fewshot_config.get_config("tiny")
    config.max_seconds = 0.1
    config.model.overrides.update(dict(  # 4 conv layers, 1 transformer layer: compiles in a fraction of tiny's time
        conv_dim=(8,) * 4, conv_kernel=(10, 3, 3, 3), conv_stride=(5, 2, 2, 2), hidden_size=16,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, classifier_proj_size=8,
        scan_layers=False))  # one layer: unrolled traces and compiles faster (test_wav2vec2: scan = loop)
    config.data.update(dict(num_speakers=2, train_per_emotion=4, eval_per_emotion=2, test_per_emotion=2,
                            min_seconds=0.1, max_seconds=0.2))
    config.protocol.update(dict(k_values=(2, 4), trials=1, emotions=("Angry", "Sad"), small_epochs=3,
                                small_patience=2))
    config.population.group_size = 2
    config.eval_batch_size = 4
    pre = config.prefinetune
    pre.max_seconds = 0.1
    pre.prefinetune.num_epochs = 1
    pre.prefinetune.update(dict(batch_size=8, eval_batch_size=8))  # the trainer's batch spans the 8 devices
    for name in pre.corpora:
        pre.corpora[name].update(dict(num_speakers=2, train_per_emotion=2, eval_per_emotion=1, test_per_emotion=1,
                                      min_seconds=0.1, max_seconds=0.2))
    return config


def test_classification_metrics_f1_match_sklearn():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 5, 200)  # class 4 only predicted
    confusion = np.zeros((6, 6))  # class 5: neither a label nor a prediction
    np.add.at(confusion, (labels, predictions), 1)
    metrics = metrics_lib.classification_metrics(confusion)
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(labels, predictions, average="weighted"))


def test_k2_accumulation_is_the_mean_or_the_released_transformers_half():
    """k = 2 with batch 1 x accumulation 4: one update from the 2 shots. transformers <= 4.45 divided each
    micro-batch's loss by 4 (half the mean, then clipped at 1.0); `protocol.accumulation="fixed"` does too."""
    from ml_collections import config_dict

    config = fewshot_config.get_config("paper")
    mean = fewshot.stage_config(config, 2)
    assert (mean.batch_size, mean.optimizer.grad_accum_steps, mean.optimizer.get("grad_scale")) == (2, 2, None)
    config.protocol.accumulation = "fixed"
    fixed = fewshot.stage_config(config, 2)
    assert fixed.optimizer.grad_scale == 0.5 and fixed.optimizer.grad_accum_steps == 2
    assert fewshot.stage_config(config, 4).optimizer.get("grad_scale") is None  # a full window: the mean
    # the scale comes before clipping at 1.0: a gradient of norm 1.6 is halved to 0.8 (not clipped), where
    # unscaled it is clipped to 1.0
    for scale, expected in ((0.5, 0.8), (None, 1.0)):
        optimizer = config_dict.ConfigDict(dict(name="sgd", learning_rate=1.0, momentum=0.0, schedule="constant",
                                                clip_norm=1.0, grad_scale=scale))
        opt = optim.make_optimizer(optimizer, 10, 10)
        zeros = {"w": np.zeros(2, np.float32)}
        updates, _ = opt.tx.update({"w": np.array([1.6, 0.0], np.float32)}, opt.tx.init(zeros), zeros)
        np.testing.assert_allclose(np.asarray(updates["w"]), [-expected, 0.0], rtol=1e-6)
    config.protocol.accumulation = "sum"
    with pytest.raises(ValueError, match="protocol.accumulation='sum'"):
        fewshot.stage_config(config, 64)  # refused for any k, not only where a window is short


def test_shots_are_balanced_seeded_and_independent_of_start_and_order():
    labels = np.repeat(np.arange(5), 6)
    shots = fewshot.draw_shots(labels, 3, 5, seed=7)
    assert len(shots) == 6 and (labels[shots] == 3).sum() == 3 and len(set(shots)) == 6
    np.testing.assert_array_equal(shots, fewshot.draw_shots(labels, 3, 5, seed=7))
    assert not np.array_equal(shots, fewshot.draw_shots(labels, 3, 5, seed=8))
    assert len(fewshot.draw_shots(labels, 0, -1, seed=0)) == 30  # k = -1: every utterance
    with pytest.raises(ValueError, match="k=64 needs 32 utterances of Sad"):
        fewshot.draw_shots(labels, 3, 64, seed=0, where="speaker 0001 train folder")
    # a trial's shots depend on (seed, speaker, emotion, k, repetition) only
    config = small_config()
    data = fewshot.SpeakerData(config)
    a = fewshot.make_trials(config, data, 2, "plain")
    b = fewshot.make_trials(config, data, 2, "iemocap")
    with config.unlocked():
        config.protocol.emotions = ("Sad", "Angry")  # another order of the same trials
    c = {t.name: t for t in fewshot.make_trials(config, data, 2, "plain")}
    for x, y in zip(a, b):
        assert x.seed == y.seed and np.array_equal(x.train.source.rows, y.train.source.rows)
        assert c[x.name].seed == x.seed and np.array_equal(c[x.name].train.source.rows, x.train.source.rows)
    assert len({t.seed for t in a}) == len(a)
    row = a[0].train[0]
    assert row["label"] in (0, 1) and a[0].train.source.target == fewshot.EMOTIONS.index(a[0].tags["emotion"])


class _Numbers:
    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.int32(self.offset + i)}


def test_multi_corpus_source_gives_each_microbatch_one_corpus():
    source = corpora.MultiCorpusSource([_Numbers(30, 0), _Numbers(10, 1000)], block=2, seed=3, epochs=2,
                                       interleave=2)
    assert source.epoch_length == 40 and len(source) == 80
    it = iter(pipeline.train_dataset(source, 4, seed=0, process_index=0, process_count=1))
    seen = {0: [], 1: []}
    for step in range(20):  # two epochs of 10 batches; the pipeline keeps the source's own order
        batch = next(it)
        np.testing.assert_array_equal(batch["corpus"], [source[step * 4 + j]["corpus"] for j in range(4)])
        for micro in (batch["corpus"][0::2], batch["corpus"][1::2]):  # step.microbatches' split
            assert micro[0] == micro[1]
        for c, x in zip(batch["corpus"], batch["x"]):
            seen[step // 10].append((int(c), int(x)))
    for epoch in (0, 1):
        corpus = np.asarray([c for c, _ in seen[epoch]])
        assert (corpus == 0).sum() == 30 and (corpus == 1).sum() == 10  # in proportion to size
        assert len({x for _, x in seen[epoch]}) == 40  # every example once per epoch
    assert seen[0] != seen[1]
    assert [source[i]["x"] for i in range(40)] == [source[i]["x"] for i in range(40)]


def test_eval_conv_impl_evaluates_with_other_convolutions_on_the_same_params():
    """`model.eval_conv_impl`: trials train with im2col (`conv_impl="matmul"`, the CPU recipe) and evaluate with
    XLA's convolutions; the same params give the same logits either way, and training is untouched."""
    config = fewshot_config.get_config("tiny")
    plain = speech_ser.build_task(config)
    with config.unlocked():
        config.model.eval_conv_impl = "xla"
    task = speech_ser.build_task(config)
    assert plain.eval_model is None and task.model == plain.model and task.model.config.conv_impl == "matmul"
    assert task.eval_model.config.conv_impl == "xla"
    rng = np.random.default_rng(0)
    batch = {"waveform": rng.standard_normal((2, task.max_samples)).astype(np.float32),
             "waveform_mask": np.ones((2, task.max_samples), bool), "label": np.array([0, 1], np.int32)}
    params = jax.jit(lambda key: jax.tree.map(lambda x: getattr(x, "value", x), task.init(key, batch)["params"],
                                              is_leaf=lambda x: hasattr(x, "value")))(jax.random.key(0))
    both = jax.jit(lambda p, b: (task.logits(p, b), plain.logits(p, b)))
    evaluated, trained_way = both(params, batch)
    np.testing.assert_allclose(evaluated, trained_way, rtol=1e-5, atol=1e-5)
    assert "conv_general_dilated" in str(jax.make_jaxpr(task.logits)(params, batch))
    training = jax.make_jaxpr(lambda p, b: task.loss(p, b, jax.random.key(1), train=True))(params, batch)
    assert "conv_general_dilated" not in str(training)
    with config.unlocked():
        config.model.eval_conv_impl = "fft"
    with pytest.raises(ValueError, match="conv_impl='fft'"):
        speech_ser.build_task(config)


def test_task_scales_the_loss_and_reference_heads_stay_frozen():
    config = small_config()
    pre = config.prefinetune
    stage, task, train, evaluation = prefinetune.build(pre, ("msp_improv", "iemocap"))
    assert task.model.heads == (("msp_improv", 4), ("iemocap", 5))
    batch = pipeline.stack_examples([task.host_transform(True)(train[i], None) for i in range(4)])
    params = jax.jit(task.init)(jax.random.key(0), batch)["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    # one program for the three (each compile of the backbone costs seconds)
    outputs = jax.jit(lambda p, b: (task.loss(p, b, None, train=False)[0], task.logits(p, b),
                                    task.eval_stats(p, {**b, "mask": np.ones(4, bool)})))
    loss, logits, stats = outputs(params, batch)
    loss, logits = float(loss), np.asarray(logits)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    classes = np.asarray([4, 5])[batch["corpus"]]
    expected = np.mean(-log_probs[np.arange(4), batch["label"]] / np.log(classes))
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert np.all(logits[batch["corpus"] == 0, 4] < -1e8)  # MSP-Improv's head has 4 classes
    trainable, frozen = optim.split_params(params, task.is_trainable)
    assert "heads" in trainable and not frozen
    with pre.unlocked():
        pre.heads = "reference"
    _, reference, _, _ = prefinetune.build(pre, ("msp_improv", "iemocap"))
    trainable, frozen = optim.split_params(params, reference.is_trainable)
    assert set(frozen) == {"heads"} and set(trainable) == {"backbone", "projector"}
    summary = task.summarize(jax.device_get(stats))
    present = {task.head_names[c] for c in batch["corpus"]}
    assert {"accuracy"} | {f"{h}/macro_f1" for h in present} <= set(summary)
    assert summary["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == batch["label"]))


def test_binary_summary_has_sklearn_metrics_and_the_reference_weighted_f1():
    task = speech_ser.build_task(small_config())
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    predictions = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    confusion = np.zeros((1, 2, 2))
    np.add.at(confusion[0], (labels, predictions), 1)
    summary = task.summarize({"confusion": confusion, "loss_sum": 0.0})
    assert summary["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert summary["weighted_f1"] == pytest.approx(f1_score(labels, predictions, average="weighted"))
    assert summary["reference_weighted_f1"] == pytest.approx(f1_score(predictions, labels, average="weighted"))


def test_reference_padding_is_the_released_preprocessing():
    """`model.padding="reference"`: the released scripts pad a split to its longest clip (truncated to 5 s),
    normalise over the padding and pass no attention mask. transformers' own feature extractor and
    Wav2Vec2ForSequenceClassification on that array give the logits jaxemo's task computes from the split's
    sources; the default ("clip") computes each clip alone, which differs for every clip shorter than the
    split's longest."""
    import torch
    import transformers

    from jaxemo.convert import wav2vec2 as convert
    from jaxemo.models import speech_classifier
    from jaxemo.systems.speech_ser.task import SpeechEmotionTask

    hf_config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8,) * 4,
        conv_kernel=(10, 3, 3, 3), conv_stride=(5, 2, 2, 2), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, classifier_proj_size=8, num_labels=2, feat_extract_norm="group",
        do_stable_layer_norm=False, conv_bias=False)
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2ForSequenceClassification(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    config = convert.config_from_hf(hf_config.to_dict(), feature_norm_mask=True, scan_layers=False)
    converted = convert.convert_state_dict(state, config)
    params = {"backbone": converted["backbone"], "projector": converted["projector"],
              "heads": {"target": converted["classifier"]}}
    max_samples, rng = 1200, np.random.default_rng(0)
    clips = [(rng.standard_normal(n) * 3000).astype(np.int16) for n in (500, 800, 1500)]  # int16 as sf.read
    split = [{"waveform": c.astype(np.float32), "label": np.int32(i % 2)} for i, c in enumerate(clips)]

    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=False)
    inputs = extractor(clips, sampling_rate=16000, max_length=max_samples, truncation=True, padding=True)
    assert "attention_mask" not in inputs
    with torch.no_grad():
        # float32, as the Trainer's collator (the extractor's `pad`) turns the stored float64 rows
        expected = hf(torch.from_numpy(np.stack(inputs["input_values"]).astype(np.float32))).logits.numpy()

    model = speech_classifier.create(config=config, heads=(("target", 2),))
    logits = {}
    for padding in ("reference", "clip"):
        task = SpeechEmotionTask(model, max_samples, padding=padding)
        source = corpora.padded_as_configured(split, padding, max_samples)
        batch = pipeline.stack_examples([task.host_transform(False)(source[i], None) for i in range(3)])
        logits[padding] = np.asarray(jax.jit(task.logits)(params, batch))
    np.testing.assert_allclose(logits["reference"], expected, atol=2e-5, rtol=2e-5)
    assert np.abs(logits["clip"][:2] - expected[:2]).max() > 1e-3  # the shorter clips change with padding
    np.testing.assert_allclose(logits["clip"][2], expected[2], atol=2e-5, rtol=2e-5)  # the longest: no padding

    with pytest.raises(ValueError, match="padded_length"):
        SpeechEmotionTask(model, max_samples, padding="reference").host_transform(False)(split[0], None)
    bad = small_config()
    bad.model.padding = "reference"
    bad.model.overrides.feature_norm_mask = False
    with pytest.raises(ValueError, match="feature_norm_mask"):
        speech_ser.build_task(bad)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The experiment's run (pre-finetuning, every trial, the report); two tests read it."""
    from experiments import fewshot_ser

    config = small_config()
    config.starts = ("plain", "improv")
    workdir = str(tmp_path_factory.mktemp("fewshot") / "run")
    return config, workdir, fewshot_ser.run(config, workdir)


def test_vmapped_trials_equal_one_at_a_time(experiment, tmp_path):
    """The same trials vmapped four to a device (one group on a one-device mesh) and one to a device (the
    experiment's plain k=2 population: its group of 8 spreads over the 8 devices): identical metrics and best
    epochs."""
    _, workdir, _ = experiment
    with open(os.path.join(workdir, "trials", "plain", "k2", "trials.json")) as f:
        alone = json.load(f)
    assert len(alone) == 4 and jax.device_count() >= 4
    config = small_config()
    config.population.group_size = 4
    one_device = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    vmapped = fewshot.run_start(config, str(tmp_path), fewshot.SpeakerData(config), "plain",
                                speech_ser.start_params(config), mesh=one_device, k_values=(2,))
    assert len(vmapped) == 4
    for a, b in zip(vmapped, alone):
        assert a["trial"] == b["trial"] and a["best_step"] == b["best_step"] and a["status"] == b["status"]
        for key in ("test/accuracy", "test/macro_f1", "test/weighted_f1", "eval/macro_f1"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["trial"], key)
        assert a["test/loss"] == pytest.approx(b["test/loss"], rel=1e-4)


def test_fewshot_experiment_pre_finetunes_runs_every_trial_resumes_and_reports(experiment):
    from experiments import fewshot_ser

    config, workdir, result = experiment
    assert result["trials"] == 2 * 2 * 2 * 2  # starts x k x speakers x emotions
    assert os.path.isdir(os.path.join(workdir, "prefinetune", "improv", "checkpoints_best"))
    for name in ("trials.csv", "by_k.csv", "by_speaker_emotion.csv", "results.json", "f1_vs_k.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    by_k = {(r["start"], r["k"]): r for r in result["by_k"]}
    assert set(by_k) == {(s, k) for s in ("plain", "improv") for k in (2, 4)}
    assert all(r["trials"] == 4 and 0 <= r["macro_f1_mean"] <= 1 for r in by_k.values())
    table = open(os.path.join(workdir, "by_k.csv")).read()
    # a run killed during the last population: its last group and the report are gone
    groups = os.path.join(workdir, "trials", "improv", "k4", "groups")
    os.remove(os.path.join(groups, sorted(os.listdir(groups))[-1]))
    for name in ("by_k.csv", "results.json"):
        os.remove(os.path.join(workdir, name))
    again = fewshot_ser.run(config, workdir)
    assert open(os.path.join(workdir, "by_k.csv")).read() == table
    assert again["by_speaker_emotion"] == json.loads(json.dumps(result["by_speaker_emotion"]))
    assert "plain" in fewshot.format_table(again["by_k"])


def test_start_checkpoints_and_bad_inputs(tmp_path):
    from experiments import fewshot_ser

    assert fewshot_ser.parse_checkpoints("improv+iemocap=/a, podcast=/b") == {"iemocap+improv": "/a",
                                                                             "podcast": "/b"}
    with pytest.raises(ValueError, match="expected <subset>=<checkpoint path>"):
        fewshot_ser.parse_checkpoints("improv")
    with pytest.raises(ValueError, match="corpus subset"):
        corpora.parse_subset("iemocap+imdb")
    assert len(corpora.subsets()) == 15
    config = small_config()
    with pytest.raises(FileNotFoundError):
        speech_ser.start_params(config, str(tmp_path / "missing"))
    with config.unlocked():
        config.protocol.speakers = ("0042",)
    with pytest.raises(ValueError, match="0042"):
        fewshot.SpeakerData(config)
    row = speech_ser.task.SpeechInput(8)({"waveform": np.ones(20, np.float32), "label": 1}, None)
    assert row["waveform_mask"].sum() == 8 and row["waveform"].shape == (8,)
    with pytest.raises(ValueError, match="mono"):
        speech_ser.task.SpeechInput(8)({"waveform": np.ones((2, 20), np.float32), "label": 1}, None)
