"""AGT for MER2024 MER-SEMI (Shi & Gao, MRAC 2024) on the MERTools baseline recipe.

    python -m experiments.agt_mer                                            # tiny: synthetic MER data
    python -m experiments.agt_mer --config=experiments/configs/agt_mer.py:paper \
        --config.data.manual_dir=/data/MER2024 --workdir=runs/agt_mer

Variants:
- `tiny` (default): the whole pipeline (AGT and the MERTools attention baseline, 5 folds x 4 draws each,
  2 self-training rounds, the EM-prior vote) on synthetic MER data whose pool has a shifted class prior, in
  minutes on 2 cores.
- `paper`: MER2024 `top1` utterance features (HuBERT-large 1024, CLIP-large 768, Baichuan-13B 5120, as the
  paper) from `data.manual_dir`; MERTools' recipe: 5 folds, 50 random draws per model, Adam (torch L2
  weight decay 1e-5), batch 32, 100 epochs, the best epoch by validation weighted F1; 3 self-training rounds.
- `ablation`: `tiny` with three AGTs guided by audio, video and text (the guiding-modality ablation).

The self-training and vote settings are this library's choices (the paper's are unpublished; README, "AGT").
"""

from ml_collections import config_dict

from experiments.configs import common

VARIANTS = ("tiny", "paper", "ablation")


def _models(small: bool) -> config_dict.ConfigDict:
    widths = (32, 64) if small else (64, 128, 256)
    agt = dict(name="agt", guide="audio", width=widths[-1], depth=1, self_depth=1, num_heads=4, mlp_ratio=2,
               dropout=0.1, attention_dropout=0.0, input_dropout=0.1, utt_tokens=1, gate="softmax",
               fuse="guided",
               search=dict(width=widths, dropout=(0.1, 0.2, 0.3), learning_rate=(1e-3, 1e-4)))
    attention = dict(name="attention", hidden_dim=128, dropout=0.3, lstm_front_padding=False,
                     search=dict(hidden_dim=(32, 64) if small else (64, 128, 256),
                                 dropout=(0.2, 0.3, 0.4, 0.5), learning_rate=(1e-3, 1e-4)))
    return config_dict.ConfigDict(dict(
        agt=agt, attention=attention,
        agt_video={**agt, "guide": "video"}, agt_text={**agt, "guide": "text"}))


def get_config(arg: str | None = None):
    variant = common.parse_variant(arg, VARIANTS)
    paper = variant == "paper"
    config = common.base_config()
    config.variant = variant
    if paper:
        config.data = config_dict.ConfigDict(dict(name="mer2024", manual_dir="", data_dir="", builder_config="top1"))
    else:
        # Feature names as MERTools' folders would have them, so the AGT's roles match by name.
        config.data = config_dict.ConfigDict(dict(
            name="synthetic_mer", train_size=600, eval_size=0, pool_size=1500,
            feature_dims={"chinese-hubert-large": 32, "clip-vit-large-patch14": 24, "Baichuan-13B-Base": 40},
            prior_shift=0.7, spread=2.0, noise=0.8, world_seed=1234))
    # MERTools' frame modes for frame-level features (builder config `fra`): scale=12 is its frm_unalign,
    # scale=6 with align="text" its frm_align; 1 and "" keep every frame (jaxemo.systems.agt.frames)
    config.frames = config_dict.ConfigDict(dict(scale=1, align=""))
    config.models = _models(small=not paper)
    config.model_names = ("agt", "agt_video", "agt_text") if variant == "ablation" else ("agt", "attention")
    # fold_sizes: "equal" (near-equal folds) or "reference" (MERTools' cut: int(n / 5) per fold, the rest last)
    config.cv = config_dict.ConfigDict(dict(folds=5, draws=50 if paper else 4, fold_sizes="equal"))
    config.batch_size = 32
    config.eval_batch_size = 256
    config.num_epochs = 100 if paper else 20
    config.log_every_steps = 1000
    config.optimizer = config_dict.ConfigDict(dict(name="adam", learning_rate=1e-3, weight_decay=1e-5,
                                                   schedule="constant"))
    config.best = config_dict.ConfigDict(dict(metric="weighted_f1", mode="max", min_delta=0.0, patience=0))
    # modality_dropout: the probability that a training sample loses one of its features (zeros; not the
    # paper's: 0). `python -m experiments.robustness` measures the other side, failures at test time.
    config.augment = config_dict.ConfigDict(dict(modality_dropout=0.0))
    config.self_training = config_dict.ConfigDict(dict(
        rounds=3 if paper else 2, per_round=6000 if paper else 450, thresholds=0.9 if paper else 0.8,
        threshold_mode="adaptive", balance="quota", adjust_prior=False, redraw=False))
    config.vote = config_dict.ConfigDict(dict(prior="em", target_prior=(), members="all", calibrate="bcts"))
    config.population.group_size = 0 if paper else 40
    # On a CPU, one XLA device per core, the trials split over them: the default run took 2 min 40 s instead of
    # 3 min 10 s on 2 cores (`python -m benchmarks.profiles.host_cores`; the few-shot recipe, slower so, keeps 1).
    config.host_devices = 0
    return config
