"""The few-shot protocol on ESD (Chen & Yu, Interspeech 2023, `finetune_downstream.py`): 2,100 trials per
starting model.

    python -m experiments.fewshot_ser                                        # tiny, synthetic ESD, 2 starts
    python -m experiments.fewshot_ser --config=experiments/configs/fewshot_ser.py:paper \
        --config.model.checkpoint=ckpt/wav2vec2_base --config.data.manual_dir=/data/ESD \
        --config.start_checkpoints=iemocap+improv=runs/prefinetune/iemocap+improv/checkpoints_best \
        --workdir=runs/fewshot

Starting models (`starts`): `plain` is `model.checkpoint` (the paper's `facebook/wav2vec2-base`; a random
initialisation from `seed` when empty, as in the synthetic runs); every other name is a corpus subset
(`iemocap+improv`, ...): its pre-finetuned model is the checkpoint `start_checkpoints` names for it
(`"<subset>=<path>,..."`) if given, else it is
pre-finetuned first by this run (`experiments/configs/prefinetune_ser.py`, the same variant) into
`<workdir>/prefinetune/<name>/`. `paper` runs all 16 starts (33,600 trials).

- `paper`: k in {2, 4, 8, 16, 24, 32, 64}, 3 repetitions, 20 speakers x 5 target emotions; full fine-tuning
  with a new 2-class head, lr 3e-5, batch 1 x accumulation 4, 10% warm-up then linear decay, gradient norm
  clipped at 1 (transformers' default); 200 epochs with patience 30 for k <= 8, 50 with patience 5 above; the
  best epoch by validation macro-F1; test accuracy, macro-F1, weighted F1. Population groups of 100 trials
  (one repetition of 20 speakers x 5 emotions); `population.group_size=0` sizes them to the device memory.
- `tiny`: the whole protocol (every k, 20 speakers, 5 emotions, 3 repetitions, the plain start and the start
  pre-finetuned on all four synthetic corpora) on the synthetic ESD with a small backbone, 0.5 s clips and
  fewer epochs, in minutes on 2 cores.
"""

from ml_collections import config_dict

from experiments.configs import common, prefinetune_ser

VARIANTS = ("tiny", "paper")
K_VALUES = (2, 4, 8, 16, 24, 32, 64)
EMOTIONS = ("Angry", "Happy", "Neutral", "Sad", "Surprise")


def get_config(arg: str | None = None):
    variant = common.parse_variant(arg, VARIANTS)
    paper = variant == "paper"
    pre = prefinetune_ser.get_config(variant)
    config = common.base_config()
    config.variant = variant
    config.sample_rate = pre.sample_rate
    config.max_seconds = pre.max_seconds
    config.model = pre.model
    config.classifier_heads = (("target", 2),)  # one new 2-class head per trial: the emotion against the rest
    if not paper:  # im2col convolutions: fast when every trial has its own conv weights (vmapped) on the CPU
        config.model.overrides.conv_impl = "matmul"
    if paper:
        config.data = config_dict.ConfigDict(dict(name="esd", manual_dir="", data_dir="", builder_config=""))
    else:  # ESD's structure: 20 speakers, 5 emotions, train / evaluation / test folders (ESD: 300 / 20 / 30)
        config.data = config_dict.ConfigDict(dict(
            name="synthetic_speech", num_speakers=20, train_per_emotion=32, eval_per_emotion=2,
            test_per_emotion=6, min_seconds=0.6, max_seconds=1.2, speaker_seed=4321))
    config.protocol = config_dict.ConfigDict(dict(
        k_values=K_VALUES, trials=3, emotions=EMOTIONS, speakers=(), small_k=8,
        small_epochs=200 if paper else 8, small_patience=30 if paper else 3,
        large_epochs=50 if paper else 3, large_patience=5 if paper else 2,
        full_epochs=10, full_patience=3,
        # k = 2's two micro-batches: their mean gradient ("mean", transformers >= 4.46) or half of it, as the
        # released code's transformers (<= 4.45) scaled them ("fixed"; jaxemo.systems.speech_ser.fewshot)
        accumulation="mean"))
    all_four = prefinetune_ser.ALL_CORPORA
    if paper:
        from jaxemo.systems.speech_ser import corpora

        config.starts = ("plain",) + tuple(corpora.subset_name(s) for s in corpora.subsets())
    else:
        config.starts = ("plain", all_four)
    config.start_checkpoints = ""  # "<subset>=<checkpoint>,...": starts pre-finetuned elsewhere
    config.prefinetune = pre  # how a start without a checkpoint is pre-finetuned
    config.batch_size = 4
    # ESD's evaluation folder is 100 clips per speaker: 20 batches of 5 per trial (a group of 100 trials
    # evaluates 500 five-second clips at a time); the synthetic one is 10 clips: one batch.
    config.eval_batch_size = 5 if paper else 10
    config.eval_every_epochs = 1
    config.log_every_steps = 1000
    config.optimizer = config_dict.ConfigDict(dict(
        name="adamw", learning_rate=3e-5 if paper else 1e-3, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
        schedule="warmup_linear", warmup_fraction=0.1, clip_norm=1.0, grad_accum_steps=4 if paper else 1))
    config.best = config_dict.ConfigDict(dict(metric="macro_f1", mode="max", min_delta=0.0, patience=0))
    config.population.group_size = 100 if paper else 300
    return config
