"""The few-shot protocol on ESD (Chen & Yu 2023, `finetune_downstream.py`) as population groups.

A trial is (starting model, speaker, target emotion, k, repetition): binary detection of the target emotion
(1) against the other four (0) for one speaker; ceil(k/2) positives and ceil(k/2) negatives drawn from the
speaker's `train` folder; validation and test are the speaker's whole `evaluation` and `test` folders; the
whole model fine-tuned with a new 2-class head (lr 3e-5, batch 1 x accumulation 4, 10% warm-up, linear decay);
200 epochs with patience 30 for k <= 8, 50 with patience 5 above (10 and 3 for k = -1, every shot); the best
epoch by validation macro-F1; test accuracy, macro-F1 and weighted F1 (weighted by the true classes' support:
the reference passes sklearn's arguments swapped, kept as `reference_weighted_f1`).

The shots of a trial depend only on (seed, speaker, emotion, k, repetition), never on the starting model or
on the order in which trials run, so every starting model sees the same few-shot sets (the reference draws
from NumPy's global generator, which transformers' Trainer reseeds at every trial).

Trials of one k share a schedule and run as `jaxemo.train.population.Population` groups of
`config.population.group_size`; each (start, k) population keeps its finished groups in
`<workdir>/trials/<start>/k<k>/groups/`, so a killed run restarts at the first unfinished group. The best
params of a trial stay on the device; nothing is written per epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import math
import os
from typing import Optional, Sequence

import numpy as np

from jaxemo.data import sources, synthetic_speech
from jaxemo.data.builders.base import Subset
from jaxemo.systems import speech_ser
from jaxemo.systems.speech_ser import corpora as corpora_lib
from jaxemo.train import population

logger = logging.getLogger(__name__)

K_VALUES = (2, 4, 8, 16, 24, 32, 64)
EMOTIONS = synthetic_speech.EMOTIONS  # ESD's label order
METRICS = ("accuracy", "macro_f1", "weighted_f1", "reference_weighted_f1")


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    speaker: str
    emotion: int
    k: int
    repetition: int

    @property
    def name(self) -> str:
        return f"{self.speaker}_{EMOTIONS[self.emotion]}_k{self.k}_r{self.repetition}"


def trial_seed(seed: int, speaker_index: int, emotion: int, k: int, repetition: int) -> int:
    """A trial's seed (its shots, its head's initialisation, its batches and dropout)."""
    state = np.random.SeedSequence([seed, speaker_index, emotion, k + 1, repetition]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def draw_shots(labels: np.ndarray, target: int, k: int, seed: int, where: str = "") -> np.ndarray:
    """Positions (into `labels`, one speaker's train folder) of ceil(k/2) target and ceil(k/2) other utterances,
    drawn without replacement; every position for k = -1."""
    labels = np.asarray(labels)
    if k == -1:
        return np.arange(len(labels))
    half = math.ceil(k / 2)
    positive, negative = np.flatnonzero(labels == target), np.flatnonzero(labels != target)
    if len(positive) < half or len(negative) < half:
        raise ValueError(f"{where}: k={k} needs {half} utterances of {EMOTIONS[target]} and {half} of the other "
                         f"emotions; the train folder has {len(positive)} and {len(negative)}")
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(positive, half, replace=False), rng.choice(negative, half, replace=False)])


def schedule(protocol, k: int) -> tuple[int, int]:
    """(epochs, early-stopping patience) of a trial with k shots."""
    if k == -1:
        return int(protocol.full_epochs), int(protocol.full_patience)
    if k <= protocol.small_k:
        return int(protocol.small_epochs), int(protocol.small_patience)
    return int(protocol.large_epochs), int(protocol.large_patience)


class SpeakerData:
    """ESD's three folders, each speaker's rows, and cached per-speaker views (shots are read every epoch)."""

    def __init__(self, config):
        data = config.data
        self.splits = {split: corpora_lib.make_split(data, split, config.seed)
                       for split in ("train", "evaluation", "test")}
        self.index = {split: corpora_lib.split_index(data, split, source) for split, source in self.splits.items()}
        found = sorted({str(s) for s in self.index["train"]["speaker"]})
        wanted = [str(s) for s in (config.protocol.speakers or found)]
        unknown = [s for s in wanted if s not in found]
        if unknown:
            raise ValueError(f"protocol.speakers {unknown} are not in the data (speakers: {found})")
        self.speakers = wanted
        self._views: dict = {}

    def rows(self, split: str, speaker: str) -> np.ndarray:
        return corpora_lib.speaker_rows(self.index[split], speaker)

    def view(self, split: str, speaker: str):
        """The speaker's rows of a folder, cached in memory (waveform and 5-class label)."""
        key = (split, speaker)
        if key not in self._views:
            rows = self.rows(split, speaker)
            self._views[key] = corpora_lib.Cached(Subset(self.splits[split], rows, f"{speaker}/{split}"))
        return self._views[key]


def trial_specs(config, speakers: Sequence[str], k: int) -> list[TrialSpec]:
    """The trials of one k, repetition-major (a group of 100 is one repetition of 20 speakers x 5 emotions)."""
    emotions = [EMOTIONS.index(e) for e in config.protocol.emotions]
    return [TrialSpec(s, e, k, r) for r in range(config.protocol.trials) for s in speakers for e in emotions]


def make_trials(config, data: SpeakerData, k: int, start: str) -> list[population.Trial]:
    """The population trials of one k and start; each trial's training set is its shots, reshuffled every epoch."""
    epochs = int(math.ceil(config.get("num_epochs") or schedule(config.protocol, k)[0]))
    padded = functools.partial(corpora_lib.padded_as_configured, padding=config.model.padding,
                               max_samples=speech_ser.max_samples(config))  # each split its own longest clip
    trials = []
    for spec in trial_specs(config, data.speakers, k):
        speaker_index = data.speakers.index(spec.speaker)
        seed = trial_seed(config.seed, speaker_index, spec.emotion, k, spec.repetition)
        train_view = data.view("train", spec.speaker)
        where = f"speaker {spec.speaker} train folder"
        shots = draw_shots(data.index["train"]["label"][data.rows("train", spec.speaker)], spec.emotion, k, seed,
                           where)
        evaluation, test = data.view("evaluation", spec.speaker), data.view("test", spec.speaker)
        shots_source = padded(corpora_lib.BinaryTarget(train_view, shots, spec.emotion, f"{spec.name}/train"))
        trials.append(population.Trial(
            spec.name, seed,
            train=sources.EpochShuffled(shots_source, seed, epochs + 1),
            eval=padded(corpora_lib.BinaryTarget(evaluation, np.arange(len(evaluation)), spec.emotion)),
            test=padded(corpora_lib.BinaryTarget(test, np.arange(len(test)), spec.emotion)),
            tags={"start": start, "speaker": spec.speaker, "emotion": EMOTIONS[spec.emotion], "k": k,
                  "repetition": spec.repetition}))
    return trials


ACCUMULATIONS = ("mean", "fixed")  # a short accumulation window's gradient: see `stage_config`


def stage_config(config, k: int, num_shots: Optional[int] = None):
    """The population's config for trials with k shots (`num_shots` training utterances: 2 ceil(k/2), or the
    whole folder for k = -1). A batch holds at most the shots (k = 2: one update from the 2 shots, as
    transformers accumulates what an epoch has: 2 micro-batches of 1); an epoch is one pass over them.

    Such a short window's gradient is the mean over its micro-batches (`protocol.accumulation="mean"`, as
    transformers >= 4.46 computes it). The transformers of the released code's time (<= 4.45) divided every
    micro-batch's loss by the configured accumulation steps (4), so k = 2's gradient was half the mean, which
    matters through gradient clipping at 1.0: `protocol.accumulation="fixed"` reproduces it."""
    accumulation = config.protocol.accumulation
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"protocol.accumulation={accumulation!r}: expected one of {ACCUMULATIONS}")
    out = config.copy_and_resolve_references()
    epochs, patience = schedule(config.protocol, k)
    shots = num_shots if num_shots is not None else 2 * math.ceil(k / 2)
    with out.unlocked():
        out.num_epochs = epochs
        out.best.patience = patience
        if shots < out.batch_size:
            accum = int(out.optimizer.get("grad_accum_steps", 1))
            micro = out.batch_size // accum
            out.batch_size = max(micro, shots - shots % micro)
            out.optimizer.grad_accum_steps = out.batch_size // micro
            if accumulation == "fixed":
                out.optimizer.grad_scale = out.optimizer.grad_accum_steps / accum
        out.steps_per_epoch = max(shots // out.batch_size, 1)
    return out


def run_start(config, workdir: str, data: SpeakerData, start: str, params: dict, mesh=None,
              k_values: Optional[Sequence[int]] = None) -> list[dict]:
    """Every trial of one starting model (`params`: its backbone and projector); rows in trial order."""
    rows = []
    task = speech_ser.build_task(config)
    for k in (k_values or config.protocol.k_values):
        stage = stage_config(config, int(k), _num_shots(data, int(k)))
        trials = make_trials(stage, data, int(k), start)
        pop = population.Population(stage, task, trials, mesh=mesh,
                                     init_params=lambda p: speech_ser.with_start(p, params))
        logger.info("start %s, k=%d: %d trials in groups of %d, %d steps each", start, k, len(trials),
                    pop.group_size, pop.total_steps)
        rows.extend(pop.run(os.path.join(workdir, "trials", _safe(start), f"k{k}")))
    return rows


def _num_shots(data: SpeakerData, k: int) -> int:
    if k != -1:
        return 2 * math.ceil(k / 2)
    sizes = {len(data.rows("train", s)) for s in data.speakers}
    if len(sizes) > 1:
        raise ValueError(f"k=-1 trains on each speaker's whole train folder, and their sizes differ ({sorted(sizes)}); "
                         f"population trials share one schedule")
    return sizes.pop()


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("+", "-")


# ------------------------------------------------------------------------------------------------ the report


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not values.size:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def summarize(rows: list[dict], by: Sequence[str]) -> list[dict]:
    """Mean and sample standard deviation of the test metrics over the trials of each group `by` (in the order
    groups first appear)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row[b] for b in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(by, key))
        entry["trials"] = len(members)
        for metric in METRICS:
            mean, std = _mean_std(r.get(f"test/{metric}") for r in members)
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean, std
        out.append(entry)
    return out


def write_csv(path: str, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict], workdir: str) -> dict:
    """`by_k.csv` (start x k, the paper's layout), `by_speaker_emotion.csv` (start x k x speaker x emotion),
    `results.json` (both), `f1_vs_k.png`."""
    by_k = summarize(rows, ("start", "k"))
    by_speaker = summarize(rows, ("start", "k", "speaker", "emotion"))
    write_csv(os.path.join(workdir, "by_k.csv"), by_k)
    write_csv(os.path.join(workdir, "by_speaker_emotion.csv"), by_speaker)
    result = {"trials": len(rows), "by_k": by_k, "by_speaker_emotion": by_speaker}
    speaker_json = os.path.join(workdir, "results.json")
    speech_ser.write_json(speaker_json, result)
    plot(by_k, os.path.join(workdir, "f1_vs_k.png"))
    return result


def plot(by_k: list[dict], path: str, metric: str = "macro_f1") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for start in dict.fromkeys(r["start"] for r in by_k):
        points = sorted((r["k"], r[f"{metric}_mean"], r[f"{metric}_std"]) for r in by_k if r["start"] == start)
        k, mean, std = (np.asarray(v, np.float64) for v in zip(*points))
        ax.errorbar(np.where(k < 0, 2 * k.max(), k), mean, yerr=std, marker="o", capsize=3, label=start)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (shots per trial; balanced)")
    ax.set_ylabel(f"test {metric.replace('_', '-')} (mean ± std over trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(by_k: list[dict], metric: str = "macro_f1") -> str:
    starts = list(dict.fromkeys(r["start"] for r in by_k))
    ks = sorted({r["k"] for r in by_k}, key=lambda k: (k < 0, k))
    lookup = {(r["start"], r["k"]): r for r in by_k}
    width = max(len(s) for s in starts)
    lines = [f"test {metric}, mean ± std over trials", " " * width + "".join(f"  k={k:<11}" for k in ks)]
    for s in starts:
        cells = []
        for k in ks:
            r = lookup.get((s, k))
            cells.append(f"  {r[f'{metric}_mean']:.3f} ± {r[f'{metric}_std']:.3f}" if r else " " * 15)
        lines.append(s.ljust(width) + "".join(cells))
    return "\n".join(lines)
