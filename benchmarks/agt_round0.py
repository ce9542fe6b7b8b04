"""AGT's round 0 end to end, side by side: MERTools' released loop against jaxemo's cross-validated population.

    python -m benchmarks.agt_round0 --write          # CPU: MER2024 feature sizes, reduced counts (minutes)
    python -m benchmarks.agt_round0 --tiny           # seconds (tests)

Both sides do the same work on the same data: `--draws` runs of MERTools' "attention" baseline (hidden
`--hidden`, dropout 0.3, the learning rate drawn per run from {1e-3, 1e-4}) x 5 folds of `--labelled` labelled
samples with MER2024's utterance features (HuBERT-large 1024, CLIP-L 768, Baichuan-13B 5120), `--epochs`
epochs of batch 32, each fold's epoch of best validation weighted F1 kept, and that epoch's logits on the
unlabelled set (`--pool` samples) averaged over the folds: what round 0 of MER-SEMI needs.

  MERTools   the control flow of `MER2024/main-release.py` (zeroQiaoba/MERTools 89120b7) in PyTorch with the
             baseline's twin (`benchmarks/twins/mertools_attention_torch.py`): one run after another; per
             fold a new model and Adam (L2 1e-5); per epoch a training pass through a `DataLoader`
             (`SubsetRandomSampler`, the dataset's `collater` building tensors from per-sample rows), an
             evaluation pass over the held-out fold and a pass over the whole test set, which for MER-SEMI is
             the unlabelled set (`toolkit/preprocess/mer2024.py`: `test1` is `video-unlabeled-with-test2noise`),
             every epoch's results kept; then the best epoch per fold and the test logits averaged.
  jaxemo     `jaxemo.systems.agt.cv.train_model`, as round 0 of `experiments.agt_mer` runs it: every trial of
             the round in one vmapped population group, evaluation on the held-out folds each epoch, the best
             params kept on the device, and the labelled set and the pool scored once per trial from them.

Wall time is end to end in this process, data already in memory on both sides: jaxemo's includes tracing
and compiling every program (reported apart too, from JAX's compile events); neither includes a process
start-up or reading features from disk. MERTools' passes over the test set every epoch are most of its work
at MER2024's ratio of unlabelled to labelled samples (about 23:1); the gap grows with the epochs (100 in
the recipe), so the section also projects both sides to the recipe's epochs from the measured parts.
`--host_devices=N` runs jaxemo's side over N CPU devices (the trials axis sharded over the host's cores).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "agt-round0"
PAPER_DIMS = {"chinese-hubert-large": 1024, "clip-vit-large-patch14": 768, "Baichuan-13B-Base": 5120}
FOLDS = 5


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.agt_round0", description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=4,
                   help="runs (MERTools: one process each; jaxemo: one population)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--labelled", type=int, default=1000)
    p.add_argument("--pool", type=int, default=23000,
                   help="unlabelled samples (MER2024: 115,595 to 5,030 labelled)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--recipe_epochs", type=int, default=100, help="the projection's epochs (MERTools: 100)")
    p.add_argument("--host_devices", type=int, default=1, help="CPU devices for jaxemo's side (the trials axis)")
    p.add_argument("--no_released", action="store_true",
                   help="jaxemo's side only (e.g. to compare --host_devices)")
    p.add_argument("--torch_threads", type=int, default=0, help="0: PyTorch's default (every core)")
    p.add_argument("--tiny", action="store_true", help="seconds: 2 draws, 2 epochs, tiny features (tests)")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    args.dims = dict(PAPER_DIMS)
    if args.tiny:
        args.draws, args.epochs, args.labelled, args.pool, args.hidden = 2, 2, 80, 200, 16
        args.dims = {name: 8 * (i + 2) for i, name in enumerate(PAPER_DIMS)}
    return args


def make_config(args):
    from experiments.configs import agt_mer as agt_config

    config = agt_config.get_config("tiny")
    with config.unlocked():
        config.data.feature_dims = dict(args.dims)
        config.data.train_size, config.data.pool_size = args.labelled, args.pool
        config.num_epochs = args.epochs
        config.cv.folds, config.cv.draws = FOLDS, args.draws
        config.population.group_size = args.draws * FOLDS
        config.models.attention.hidden_dim, config.models.attention.dropout = args.hidden, 0.3
    return config


def make_data(config):
    from jaxemo.data import sources
    from jaxemo.systems.agt import data as data_lib

    labelled = data_lib._materialize(sources.make_source(config.data, "train", 0), "train")
    pool = data_lib._materialize(sources.make_source(config.data, "unlabeled", 0), "pool")
    return labelled, pool


def run_jaxemo(config, args, labelled, pool, folds, draws) -> dict:
    import jax

    from benchmarks import report
    from jaxemo.systems.agt import cv
    from jaxemo.train import sharding

    clock = report.CompileClock()
    mesh = sharding.make_mesh({"data": args.host_devices}, devices=jax.devices()[:args.host_devices])
    with tempfile.TemporaryDirectory() as workdir:
        start, cpu_start = time.perf_counter(), time.process_time()
        member = cv.train_model(config, "attention", config.models.attention, None, labelled, pool, folds, draws,
                                0, workdir, mesh=mesh)
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "compile_s": clock.seconds, "cpu_s": cpu_s, "pool_logits": member.pool_logits,
            "cv_weighted_f1": member.cv_weighted_f1, "draw": member.draw}


def run_mertools(config, args, labelled, pool, folds, draws) -> dict:
    """`main-release.py`'s loop (see the module docstring), timed per part: training passes, evaluation passes
    over the held-out folds, passes over the test set (the pool)."""
    import torch
    from sklearn.metrics import f1_score
    from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

    from benchmarks.twins import mertools_attention_torch as twin

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    names = tuple(args.dims)

    class FeatData(Dataset):  # MERTools' Data_Feat: per-sample rows, a collater that builds the batch
        def __init__(self, data):
            self.features, self.labels = data.features, data.labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return {**{n: self.features[n][index] for n in names}, "emo": int(self.labels[index]),
                    "name": str(index)}

        def collater(self, instances):
            batch = {n: torch.FloatTensor(np.array([i[n] for i in instances])) for n in names}
            return batch, torch.LongTensor([i["emo"] for i in instances]), [i["name"] for i in instances]

    def run_pass(model, loader, optimizer=None):
        model.train(optimizer is not None)
        logits_out, labels_out = [], []
        with torch.set_grad_enabled(optimizer is not None):
            for batch, emos, _ in loader:
                if optimizer is not None:
                    optimizer.zero_grad()
                logits, _ = model(batch)
                loss = torch.nn.functional.cross_entropy(logits, emos)  # MERTools' CELoss: NLL of log-softmax
                logits_out.append(logits.detach().numpy())
                labels_out.append(emos.numpy())
                if optimizer is not None:
                    loss.backward()
                    optimizer.step()
        return np.concatenate(logits_out), np.concatenate(labels_out)

    train_data, test_data = FeatData(labelled), FeatData(pool.take(np.arange(len(pool)), np.zeros(len(pool), int)))
    everything = np.arange(len(labelled))
    parts = {"train": 0.0, "eval": 0.0, "test": 0.0}
    runs = []
    start = time.perf_counter()
    for hyperparams in draws:
        folder_test, folder_f1 = [], []
        for fold in folds:
            train_loader = DataLoader(train_data, batch_size=config.batch_size, collate_fn=train_data.collater,
                                      sampler=SubsetRandomSampler(np.setdiff1d(everything, fold).tolist()))
            eval_loader = DataLoader(train_data, batch_size=config.batch_size, collate_fn=train_data.collater,
                                     sampler=SubsetRandomSampler(fold.tolist()))
            test_loader = DataLoader(test_data, batch_size=config.batch_size, collate_fn=test_data.collater,
                                     shuffle=False)
            model = twin.build(args.dims, hidden_dim=args.hidden, dropout=0.3)
            optimizer = torch.optim.Adam(model.parameters(), lr=float(hyperparams["learning_rate"]),
                                         weight_decay=1e-5)
            store = []
            for _ in range(args.epochs):
                for part, loader, opt in (("train", train_loader, optimizer), ("eval", eval_loader, None),
                                          ("test", test_loader, None)):
                    t = time.perf_counter()
                    logits, labels = run_pass(model, loader, opt)
                    parts[part] += time.perf_counter() - t
                    if part == "eval":
                        f1 = f1_score(labels, logits.argmax(1), average="weighted")
                    if part == "test":
                        store.append((f1, logits))
            best = int(np.argmax([f1 for f1, _ in store]))
            folder_f1.append(store[best][0])
            folder_test.append(store[best][1])
        runs.append({"cv_weighted_f1": float(np.mean(folder_f1)), "pool_logits": np.mean(folder_test, axis=0)})
    seconds = time.perf_counter() - start
    best = max(range(len(runs)), key=lambda r: runs[r]["cv_weighted_f1"])
    return {"seconds": seconds, "parts": parts, "cv_weighted_f1": runs[best]["cv_weighted_f1"], "draw": best,
            "threads": torch.get_num_threads()}


def measure(args) -> dict:
    import jax

    from jaxemo.systems.agt import cv, data as data_lib

    config = make_config(args)
    labelled, pool = make_data(config)
    folds = data_lib.folds(len(labelled), FOLDS, int(config.seed))
    draws = cv.draw_hyperparams({"learning_rate": (1e-3, 1e-4)}, args.draws, 0)
    if len(jax.devices()) < args.host_devices:
        raise ValueError(f"--host_devices={args.host_devices}: this process has {len(jax.devices())} device(s)")
    from benchmarks import report

    jaxemo, others = report.with_others_cpu_share(
        lambda: run_jaxemo(config, args, labelled, pool, folds, draws))
    jaxemo["others"] = others
    print(f"jaxemo: {jaxemo['seconds']:.1f} s ({jaxemo['compile_s']:.1f} s compiling, {jaxemo['cpu_s']:.1f} s of "
          "CPU time)", flush=True)
    if args.no_released:
        return {"args": args, "jaxemo": jaxemo, "mertools": None}
    mertools, others = report.with_others_cpu_share(
        lambda: run_mertools(config, args, labelled, pool, folds, draws))
    mertools["others"] = others
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in mertools["parts"].items())
    print(f"MERTools loop: {mertools['seconds']:.1f} s ({parts})",
          flush=True)
    return {"args": args, "jaxemo": jaxemo, "mertools": mertools}


def projection(result: dict) -> tuple[float, float]:
    """Both sides' seconds at `--recipe_epochs`: MERTools' passes scale with the epochs; jaxemo's time less its
    compilation scales with the epochs except the one scoring of the pool per trial, which is left at its
    measured share (an overestimate of jaxemo's time: the pool's scoring is counted as if per epoch)."""
    args, j, m = result["args"], result["jaxemo"], result["mertools"]
    scale = args.recipe_epochs / args.epochs
    return m and m["seconds"] * scale, j["compile_s"] + (j["seconds"] - j["compile_s"]) * scale


def section_body(result: dict, argv) -> str:
    import jax

    from benchmarks import report

    args, j, m = result["args"], result["jaxemo"], result["mertools"]
    trials = args.draws * FOLDS
    m_project, j_project = projection(result)
    lines = [
        "| side | trainings | wall s end to end | of which XLA compiling | per training s | "
        f"projected to {args.recipe_epochs} epochs s | best draw's CV weighted F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    if m is not None:
        lines.append(f"| MERTools `main-release.py` loop (PyTorch, {m['threads']} threads) | {trials} | "
                     f"{m['seconds']:.1f} | - | {m['seconds'] / trials:.2f} | {m_project:,.0f} | "
                     f"{m['cv_weighted_f1']:.3f} |")
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in m["parts"].items())
        notes += [f"- **jaxemo at {m['seconds'] / j['seconds']:.1f}x MERTools' speed end to end** (compilation "
                  f"included); projected to the recipe's {args.recipe_epochs} epochs: "
                  f"{m_project / j_project:.1f}x.",
                  f"- MERTools' time by part: {parts} (the test passes score the {args.pool:,} unlabelled samples "
                  "every epoch; jaxemo scores them once per training, from its best params)."]
    lines.append(f"| jaxemo `cv.train_model` (population, {args.host_devices} CPU device(s)) | {trials} | "
                 f"{j['seconds']:.1f} | {j['compile_s']:.1f} | {j['seconds'] / trials:.2f} | {j_project:,.0f} | "
                 f"{j['cv_weighted_f1']:.3f} |")
    others = (f"- Other processes used {report.others_share_text(j['others'])} of the cores during jaxemo's "
              "side")
    others += "." if m is None else f" and {report.others_share_text(m['others'])} during MERTools'."
    return "\n".join([
        f"### AGT round 0 end to end: MERTools' loop against jaxemo, {jax.default_backend()}, float32",
        "",
        *lines,
        "",
        *notes,
        f"- Work: {args.draws} draws x {FOLDS} folds of the `attention` baseline (hidden {args.hidden}, dropout "
        f"0.3), {args.labelled:,} labelled samples, {args.pool:,} unlabelled, features {args.dims}, batch 32, "
        f"{args.epochs} epochs, the best epoch per fold by validation weighted F1. Same data and folds on both "
        "sides; the F1s differ by initialisation and batch order, not by method.",
        others + " A quiet machine: a few percent.",
        f"- Command: `python -m benchmarks.agt_round0 {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
    ])


def main(argv=None) -> dict:
    from benchmarks import report

    argv = sys.argv[1:] if argv is None else list(argv)
    return report.run_side_by_side(argv, parse_args(argv), SECTION, measure, section_body)


if __name__ == "__main__":
    main()
