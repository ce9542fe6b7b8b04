"""Few-shot SER end to end, side by side: the released per-trial `Trainer` pipeline against jaxemo's population.

    python -m benchmarks.fewshot_released --write      # CPU: 25 trials of a reduced wav2vec2, 1 s clips
    python -m benchmarks.fewshot_released --tiny       # seconds (tests)

Both sides run the same trials (`jaxemo.systems.speech_ser.fewshot`: one synthetic ESD speaker and target
emotion each, k shots, the speaker's evaluation and test folders) from the same starting model, a
`Wav2Vec2ForSequenceClassification` saved with `save_pretrained` (random weights, the reduced sizes of
`benchmarks.fewshot --cpu`: 2 layers, hidden 128, conv 64), for `--epochs` epochs with evaluation every epoch:

  released   `finetune_downstream.py` of maxlchen/Speech-PreFinetuning (f226776), trial after trial: the
             feature extractor pads and normalises each split, the model is reloaded from the checkpoint
             folder (`from_pretrained`) and given a new 2-class head, and a transformers `Trainer` runs with
             the released arguments (lr 3e-5, batch 1 x accumulation 4, 10% warm-up, evaluation and a
             checkpoint every epoch, 2 kept, the best by macro-F1 reloaded at the end, early stopping with the
             protocol's patience, evaluation batch 1), then `evaluate()`, `predict()` on the test folder and
             the output folder removed. `torch.set_num_threads(1)`, as the released script sets.
  jaxemo     the checkpoint converted once (`jaxemo.convert.wav2vec2`), then `fewshot.run_start`, as
             `experiments.fewshot_ser` runs a start: the trials as vmapped population groups, the best params
             by validation macro-F1 kept on the device, the test folder scored from them.

Wall time is end to end in this process (data already in memory on both sides): the released side's model
reloads, checkpoint writes and evaluation passes, jaxemo's tracing and compilation (also reported apart). The
released script's one thread leaves a core idle on this machine; the section gives the ratio against it and
against the bound of running it twice in parallel (half its time), what a user with two cores could do.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "fewshot-released"
RELEASED_PATIENCE = {True: 30, False: 5}  # k <= 8 or not (finetune_downstream.py)


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fewshot_released", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=25, help="rounded up to whole speakers (5 target emotions each)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--eval_clips", type=int, default=100, help="evaluation clips per speaker (ESD: 100)")
    p.add_argument("--group_size", type=int, default=25, help="jaxemo's trials per population group")
    p.add_argument("--host_devices", type=int, default=1, help="CPU devices for jaxemo's side (the trials axis)")
    p.add_argument("--conv_impl", default=None, help="jaxemo's convolutions (default: `benchmarks.fewshot`'s for "
                   "the backend: matmul on the CPU)")
    p.add_argument("--eval_conv_impl", default=None, help="jaxemo's convolutions for evaluation (`model."
                   "eval_conv_impl`; e.g. xla: evaluate with XLA's, train with im2col)")
    p.add_argument("--no_released", action="store_true",
                   help="jaxemo's side only (e.g. to compare --host_devices)")
    p.add_argument("--tiny", action="store_true", help="seconds: 4 trials of a tiny model (tests)")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs, args.eval_clips, args.k, args.group_size = 5, 2, 10, 4, 5
    return args


def make_config(args):
    from benchmarks import fewshot as fewshot_bench

    shape = ["--tiny"] if args.tiny else ["--cpu"]
    bench = fewshot_bench.parse_args([*shape, f"--k={args.k}", f"--epochs={args.epochs}",
                                      f"--eval_clips={args.eval_clips}", f"--trials={args.trials}",
                                      f"--group_size={args.group_size}",
                                      *([f"--conv_impl={args.conv_impl}"] if args.conv_impl else [])])
    config = fewshot_bench.make_config(bench)
    with config.unlocked():
        config.protocol.small_patience = config.protocol.large_patience = RELEASED_PATIENCE[args.k <= 8]
        config.population.group_size = args.group_size
        if args.eval_conv_impl:
            config.model.eval_conv_impl = args.eval_conv_impl
        config.data.test_per_emotion = 6  # ESD's test folder: 30 clips per speaker
    args.eval_clips = bench.eval_clips
    return config


def hf_config(config):
    """The transformers config of the jaxemo model config (the same architecture, field by field)."""
    import transformers

    from jaxemo.systems import speech_ser

    ours = speech_ser.model_config(config.model).to_dict()
    known = set(transformers.Wav2Vec2Config().to_dict())
    return transformers.Wav2Vec2Config(**{k: v for k, v in ours.items() if k in known}, num_labels=4)


def save_start(config, folder: str) -> None:
    """The starting model: a randomly initialised sequence classifier, saved as a pre-finetuned run would be."""
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.Wav2Vec2ForSequenceClassification(hf_config(config)).save_pretrained(folder)


def _rows(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def run_jaxemo(config, args, data, folder: str) -> dict:
    import jax
    import safetensors.numpy

    from jaxemo.convert import wav2vec2 as convert
    from jaxemo.systems import speech_ser
    from jaxemo.systems.speech_ser import fewshot
    from jaxemo.train import sharding

    from benchmarks import report

    clock = report.CompileClock()
    mesh = sharding.make_mesh({"data": args.host_devices}, devices=jax.devices()[:args.host_devices])
    start, cpu_start = time.perf_counter(), time.process_time()
    state = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))
    params = convert.convert_state_dict(state, speech_ser.model_config(config.model))
    start_params = {k: params[k] for k in speech_ser.START_PARTS}
    with tempfile.TemporaryDirectory() as workdir:
        rows = fewshot.run_start(config, workdir, data, "plain", start_params, mesh=mesh, k_values=(args.k,))
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "compile_s": clock.seconds, "cpu_s": cpu_s, "trials": len(rows),
            "steps_run": [r["steps_run"] for r in rows],
            "test_macro_f1": float(np.mean([r["test/macro_f1"] for r in rows]))}


def run_released(config, args, trials, folder: str) -> dict:
    """`finetune_downstream.py`'s loop body for each trial (see the module docstring)."""
    import torch
    import transformers
    from sklearn.metrics import accuracy_score, f1_score

    torch.set_num_threads(1)  # as the released script
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=False)
    max_length = int(16000 * config.max_seconds)

    def encode(source) -> list[dict]:  # datasets.map(batched=True): one batch of up to 1,000 rows per split
        rows = _rows(source)
        inputs = extractor([np.asarray(r["waveform"], np.float32) for r in rows], sampling_rate=16000,
                           max_length=max_length, truncation=True, padding=True)
        return [{"input_values": v, "label": int(r["label"])} for v, r in zip(inputs["input_values"], rows)]

    def compute_metrics(eval_pred):
        predictions, labels = np.argmax(eval_pred.predictions, axis=1), eval_pred.label_ids
        return {"accuracy": accuracy_score(labels, predictions),
                "macro_f1": f1_score(labels, predictions, average="macro"),
                "micro_f1": f1_score(labels, predictions, average="micro"),
                "weighted_f1": f1_score(predictions, labels, average="weighted")}  # swapped, as released

    transformers.logging.set_verbosity_error()
    patience = RELEASED_PATIENCE[args.k <= 8]
    f1s, epochs = [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for trial in trials:
            train, evaluation, test = encode(trial.train.source), encode(trial.eval), encode(trial.test)
            model = transformers.AutoModelForAudioClassification.from_pretrained(folder)
            model.classifier = torch.nn.Linear(in_features=model.classifier.in_features, out_features=2, bias=True)
            model.config.num_labels = 2
            output = os.path.join(root, trial.name)
            training_args = transformers.TrainingArguments(
                output, eval_strategy="epoch", save_strategy="epoch", learning_rate=3e-5,
                per_device_train_batch_size=1, gradient_accumulation_steps=4, per_device_eval_batch_size=1,
                warmup_steps=0.1,  # the released warmup_ratio=0.1: transformers 5 reads a float below 1 as a ratio
                logging_steps=3, load_best_model_at_end=True, metric_for_best_model="macro_f1",
                push_to_hub=False, save_total_limit=2, num_train_epochs=args.epochs, report_to="none",
                use_cpu=True, disable_tqdm=True)
            trainer = transformers.Trainer(
                model, training_args, train_dataset=train, eval_dataset=evaluation, processing_class=extractor,
                compute_metrics=compute_metrics,
                callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=patience)])
            trainer.train()
            epochs.append(trainer.state.epoch)
            trainer.evaluate()
            _, _, metrics = trainer.predict(test)
            f1s.append(metrics["test_macro_f1"])
            shutil.rmtree(output)
    return {"seconds": time.perf_counter() - start, "trials": len(trials), "test_macro_f1": float(np.mean(f1s)),
            "epochs": epochs}


def measure(args) -> dict:
    import jax

    from benchmarks import report
    from jaxemo.systems.speech_ser import fewshot

    config = make_config(args)
    if len(jax.devices()) < args.host_devices:
        raise ValueError(f"--host_devices={args.host_devices}: this process has {len(jax.devices())} device(s)")
    data = fewshot.SpeakerData(config)
    trials = fewshot.make_trials(fewshot.stage_config(config, args.k), data, args.k, "plain")
    for trial in trials:  # every clip read (and cached) before either side is timed
        for source in (trial.train.source, trial.eval, trial.test):
            _rows(source)
    with tempfile.TemporaryDirectory() as folder:
        save_start(config, folder)
        jaxemo, others_j = report.with_others_cpu_share(lambda: run_jaxemo(config, args, data, folder))
        print(f"jaxemo: {jaxemo['trials']} trials in {jaxemo['seconds']:.1f} s ({jaxemo['compile_s']:.1f} s "
              f"compiling, {jaxemo['cpu_s']:.1f} s of CPU time)", flush=True)
        released = None
        if not args.no_released:
            released, others_r = report.with_others_cpu_share(
                lambda: run_released(config, args, trials, folder))
            released["others"] = others_r
            print(f"released: {released['trials']} trials in {released['seconds']:.1f} s", flush=True)
    jaxemo["others"] = others_j
    return {"args": args, "config": config, "jaxemo": jaxemo, "released": released}


def section_body(result: dict, argv) -> str:
    import jax

    from benchmarks import report

    args, j, r = result["args"], result["jaxemo"], result["released"]
    model = result["config"].model
    lines = [
        "| side | trials | wall s end to end | of which XLA compiling | per trial s | trials/hour "
        "| mean test macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    if r is not None:
        lines.append(f"| released `Trainer` per trial (PyTorch, 1 thread) | {r['trials']} | {r['seconds']:.1f} "
                     "| - | "
                     f"{r['seconds'] / r['trials']:.2f} | {3600 * r['trials'] / r['seconds']:,.0f} | "
                     f"{r['test_macro_f1']:.3f} |")
        ratio = r["seconds"] / j["seconds"]
        notes.append(f"- **jaxemo at {ratio:.2f}x the released pipeline's speed end to end** (compilation "
                     "included); "
                     f"{ratio / 2:.2f}x against the bound of two released processes in parallel (one per core).")
    lines.append(f"| jaxemo population ({args.host_devices} CPU device(s)) | {j['trials']} | {j['seconds']:.1f} | "
                 f"{j['compile_s']:.1f} | {j['seconds'] / j['trials']:.2f} | "
                 f"{3600 * j['trials'] / j['seconds']:,.0f} | "
                 f"{j['test_macro_f1']:.3f} |")
    others = (f"- Other processes used {report.others_share_text(j['others'])} of the cores during jaxemo's "
              "side")
    others += "." if r is None else f" and {report.others_share_text(r['others'])} during the released side's."
    return "\n".join([
        f"### Few-shot SER end to end: the released Trainer pipeline against jaxemo, {jax.default_backend()}, "
        "float32",
        "",
        *lines,
        "",
        *notes,
        f"- Trials: k = {args.k}, {args.epochs} epochs, evaluation every epoch on the speaker's {args.eval_clips} "
        f"evaluation clips, the test folder scored once at the end; wav2vec2 `{model.preset}` "
        f"{dict(model.overrides)}, evaluated with conv_impl="
        f"{model.get('eval_conv_impl') or model.overrides.conv_impl}, "
        f"{result['config'].max_seconds} s clips. The F1s differ by initialisation "
        "of the new head, batch order and dropout, not by method.",
        others,
        f"- Command: `python -m benchmarks.fewshot_released {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
    ])


def main(argv=None) -> dict:
    from benchmarks import report

    argv = sys.argv[1:] if argv is None else list(argv)
    return report.run_side_by_side(argv, parse_args(argv), SECTION, measure, section_body)


if __name__ == "__main__":
    main()
