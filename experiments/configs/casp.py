"""CASP: source training, then test-time adaptation on a shifted target (experiments/casp.py).

Variants:
  tiny                       synthetic source -> shifted synthetic target, small sizes: a few minutes on CPU
  synthetic                  the same shift at MOSI's size (1,284 / 229 / 686 clips, 50 steps, 768/5/20 dims)
  <src>2<tgt>_<late|early>   the six ordered pairs of mosi, mosei, sims x the two backbones, e.g.
                             mosei2sims_late; set data.manual_dir and target.manual_dir to the folders holding
                             each dataset's `casp.pkl`

`--config.source_checkpoint=<state dict of a CASP reference model>` skips source training and adapts that
model (converted by `jaxemo.convert.casp`).

Feature dimensions must agree between source and target, because the source model's input projections are
reused on the target. CASP's own features (one MMSA-FET extraction for all three datasets, the builders'
`casp` config) do; MMSA's released pickles do not (audio 5 / 74 / 33, vision 20 / 35 / 709), and the run
stops with an error naming both dims. `target.align_features="pad"` instead zero-pads or truncates each target
modality to the source's dims: it runs, but it feeds the model different features, so it is not CASP's
setting; report it as such. CH-SIMS labels are scaled to [-3, 3] by choosing its `casp_scaled` builder
config, which the pair variants do whenever SIMS is involved.
"""

import itertools

from ml_collections import config_dict

from experiments.configs import common

DATASETS = {"mosi": "cmu_mosi", "mosei": "cmu_mosei", "sims": "ch_sims"}
PAIRS = tuple(f"{s}2{t}_{b}" for s, t in itertools.permutations(DATASETS, 2) for b in ("late", "early"))
VARIANTS = ("tiny", "synthetic", *PAIRS)


def _builder_config(dataset: str) -> str:
    return "casp_scaled" if dataset == "sims" else "casp"


def get_config(arg=None):
    variant = common.parse_variant(arg, VARIANTS)
    config = common.base_config()
    config.variant = variant
    config.seed = 666  # CASP's main.py
    config.model = config_dict.ConfigDict({
        "fusion": "late", "proj_dim": 40, "num_heads": 8, "depth": 5, "attn_dropout": 0.1, "relu_dropout": 0.1,
        "res_dropout": 0.1, "embed_dropout": 0.25, "out_dropout": 0.0, "zero_position_quirk": False,
        "dropout_impl": "threefry",  # "hash": cheaper dropout masks on the CPU (layers.HashDropout)
        "use_padding_mask": False, "dtype": "float32",
    })
    # A source model trained with CASP's reference code (`--stage pretrain`) instead of source training here:
    # the path of its state dict (.pt / .pth; CASP saves whole pickled models, which must be re-saved as a
    # state dict once, see `jaxemo.convert.casp.load_reference_checkpoint`). When set, source training is
    # skipped and the converted weights are adapted; `model.fusion`, `model.depth` and `model.proj_dim` must
    # match the checkpoint and `model.num_heads` must be the `--num_heads` it was trained with (CASP's default
    # 8). For the reference's exact forward also set `model.zero_position_quirk=True`.
    config.source_checkpoint = ""
    # Source training (CASP's `--stage pretrain`): L1, Adam 1e-3, clip 0.8, batch 24, 30 epochs, the epoch
    # with the best source-valid Acc-2 kept (CASP's `>0` binary accuracy on all samples).
    config.batch_size = 24
    config.eval_batch_size = 24
    config.num_epochs = 30
    config.optimizer = config_dict.ConfigDict({"name": "adam", "learning_rate": 1e-3, "clip_norm": 0.8,
                                               "schedule": "constant", "grad_accum_steps": 1})
    config.eval_every_epochs = 1
    config.log_every_steps = 50
    config.best.metric = "acc2_reference"
    # CASP's ReduceLROnPlateau (mode "min", relative threshold) on the source-valid L1 loss, stepped after every
    # evaluation (every epoch): the rate is multiplied by `factor` once more than `patience` evaluations in a
    # row were not below best * (1 - threshold). Off by default (a constant rate); `enabled=True` trains the
    # source with `jaxemo.systems.casp.plateau`. Adaptation keeps a constant rate either way (CASP steps it on
    # target-valid labels, which adaptation here never reads).
    config.lr_plateau = config_dict.ConfigDict({"enabled": False, "metric": "loss", "factor": 0.1, "patience": 10,
                                                "threshold": 1e-4})
    config.data.update({"name": "synthetic_sentiment", "train_split": "source_train",
                        "eval_split": "source_valid", "builder_config": ""})
    # The target: `adapt_split` is adapted on without labels (CASP adapts on the target train split),
    # `test_split` is where every method is scored.
    config.target = config_dict.ConfigDict({"name": "synthetic_sentiment", "manual_dir": "", "data_dir": "",
                                            "builder_config": "", "adapt_split": "target_train",
                                            "test_split": "target_test", "align_features": "none"})
    config.tta = config_dict.ConfigDict({
        "modes": ("offline", "online", "episodic"),
        "methods": ("source_only", "casp", "dropout_variance", "feature_alignment"),
        "adapted": (r"layer_norms_\d+",),  # CASP's fix_para: the per-layer LayerNorms only
        "learning_rate": 1e-3, "clip_norm": 0.8, "batch_size": 24,
        # offline: CASP's README (15 epochs, a snapshot every 3, quantile 0.95, 5 pseudo-label epochs)
        "epochs": 15, "snapshot_every": 3, "pseudo_epochs": 5, "quantile": 0.95, "selection": "stable",
        "shuffle": False, "temperature": 0.5, "per_sample_drop": False, "dropout_samples": 4,
        # online: one step per incoming batch; episodic: K steps on `views` copies of each sample
        "online_steps": 1, "episodic_steps": 5, "episodic_views": 4, "episodic_batch": 256,
    })
    if variant == "tiny":
        _synthetic(config, train=1200, valid=240, test=480, steps=(8, 16, 12), dims=(16, 8, 12))
        config.num_epochs = 6
        config.model.update(depth=2)
        config.tta.update(epochs=6, snapshot_every=2, pseudo_epochs=2, episodic_steps=3, episodic_views=4,
                          episodic_batch=64)
    elif variant == "synthetic":
        _synthetic(config, train=1284, valid=229, test=686, steps=(50, 50, 50), dims=(768, 5, 20))
    else:
        pair, backbone = variant.split("_")
        source, target = pair.split("2")
        config.model.fusion = backbone
        config.data.update({"name": DATASETS[source], "builder_config": _builder_config(source),
                            "train_split": "train", "eval_split": "valid"})
        config.target.update({"name": DATASETS[target], "builder_config": _builder_config(target),
                              "adapt_split": "train", "test_split": "test"})
    return config


def _synthetic(config, *, train: int, valid: int, test: int, steps: tuple, dims: tuple) -> None:
    """Source and target from `synthetic_sentiment` (one generator; the target split names select the shift).

    The target's sensors are three times noisier in every modality (`<modality>_target_noise=3`, no offset,
    scale or rotation: `shift=0`), as when the test recordings are made in worse conditions. The source
    model's predictions then shrink towards the mean (regression dilution) and its MAE rises from about
    0.42 to 0.75; CASP recovers part of it. On the generator's offset/scale/rotation shift (`shift=1`)
    CASP does not help: its contrastive stage spreads the representation and stretches the predictions,
    which repairs dilution but not a bias. See README, "CASP".
    """
    fields = {"train_size": train, "eval_size": valid, "shift": 0.0, "aligned": False,
              **{f"{m}_target_noise": 3.0 for m in ("text", "audio", "vision")},
              **{f"{m}_len": t for m, t in zip(("text", "audio", "vision"), steps)},
              **{f"{m}_dim": d for m, d in zip(("text", "audio", "vision"), dims)}}
    config.data.update(fields)
    config.data.test_size = test
    config.target.update(fields)
    config.target.test_size = test
