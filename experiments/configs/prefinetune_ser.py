"""Pre-finetuning wav2vec 2.0 on emotional speech corpora (Chen & Yu, Interspeech 2023, `prefinetune.py`).

    python -m experiments.prefinetune_ser                                    # tiny, synthetic corpora
    python -m experiments.prefinetune_ser --config=experiments/configs/prefinetune_ser.py:paper,iemocap+improv \
        --config.model.checkpoint=ckpt/wav2vec2_base --config.corpora.iemocap.manual_dir=/data/IEMOCAP \
        --config.corpora.msp_improv.manual_dir=/data/MSP-IMPROV --workdir=runs/prefinetune/iemocap+improv

The argument is `<variant>[,<corpus subset>]`: a variant (`tiny`, `paper`) and any of the 15 non-empty
subsets of iemocap, podcast (MSP-Podcast), improv (MSP-Improv), mandarin (Mandarin Affective Speech) joined by
'+' (default: all four). `jaxemo.systems.speech_ser.corpora.subsets()` lists them.

- `paper`: the released code: `facebook/wav2vec2-base` (convert it with `python -m jaxemo.convert wav2vec2`;
  its config's dropout 0.1, LayerDrop 0.1 (0.05 in some copies: the converted config wins) and SpecAugment time
  masking 0.05 x 10 stay on in training), all parameters trained, one head per corpus on the shared 256-wide
  projector, loss / ln(classes), batch 1 x accumulation 4, AdamW lr 3e-5 without weight decay, 10% linear
  warm-up then linear decay over 200 epochs, evaluation every epoch, early stopping on the pooled validation
  accuracy (patience 3, threshold 0.02), the best epoch kept. Audio resampled to 16 kHz by the builders (the
  reference feeds every corpus at its native rate as if it were 16 kHz) and truncated to 5 s.
  `heads="reference"` reproduces the released code's untrained heads. The released preprocessing pads every
  split to its longest clip (per 1,000 clips), normalises over the padding and passes no attention mask, so a
  clip's output depends on its split; here every clip is padded to 5 s (static shapes) with its mask and
  `feature_norm_mask`, so a padded clip computes what it alone would. `model.padding=reference` restores the
  released padding.
- `tiny`: the same stage on synthetic stand-ins for the four corpora (their own voices and label sets), with
  a small random backbone, for a 2-core CPU.
"""

from ml_collections import config_dict

from experiments.configs import common

VARIANTS = ("tiny", "paper")
ALL_CORPORA = "iemocap+podcast+improv+mandarin"

# Builder data configs of the four corpora (read from manual_dir; see README, "Real data").
REAL_CORPORA = dict(
    iemocap=dict(name="iemocap", builder_config="random"),
    msp_podcast=dict(name="msp_podcast", builder_config="all"),
    msp_improv=dict(name="msp_improv", builder_config=""),
    mandarin_affective_speech=dict(name="mandarin_affective_speech", builder_config=""),
)
# Synthetic stand-ins: other voices than the few-shot speakers (`speaker_seed`) and the real label sets'
# sizes where they are fixed (MSP-Improv's four classes; the others keep all five emotions).
SYNTHETIC_CORPORA = dict(
    iemocap=dict(speaker_seed=101, num_speakers=10, emotions=()),
    msp_podcast=dict(speaker_seed=202, num_speakers=12, emotions=("Angry", "Happy", "Neutral", "Sad")),
    msp_improv=dict(speaker_seed=303, num_speakers=6, emotions=("Angry", "Happy", "Neutral", "Sad")),
    mandarin_affective_speech=dict(speaker_seed=404, num_speakers=6, emotions=()),
)


def parse_arg(arg: str | None) -> tuple[str, str]:
    variant, _, subset = (arg or "tiny").partition(",")
    from jaxemo.systems.speech_ser import corpora

    return common.parse_variant(variant, VARIANTS), corpora.subset_name(corpora.parse_subset(subset or ALL_CORPORA))


def model_config(variant: str) -> config_dict.ConfigDict:
    """The backbone: a converted checkpoint (`checkpoint`) or a preset, with config overrides;
    `eval_conv_impl` ("": the backbone's `conv_impl`) computes evaluation's convolutions another way."""
    if variant == "paper":
        overrides = dict(feature_norm_mask=True)  # a clip padded to 5 s computes what it computes alone
        preset = "base"
    else:  # the synthetic runs train from a random start: no SpecAugment/LayerDrop, light dropout
        overrides = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                         layerdrop=0.0, mask_time_prob=0.0, feature_norm_mask=True, conv_dim=(8,) * 7)
        preset = "tiny"
    # padding: "clip" (each clip computes what it computes alone) or "reference" (the released preprocessing:
    # each split padded to its longest clip, normalised over the padding, no attention mask)
    return config_dict.ConfigDict(dict(preset=preset, checkpoint="", overrides=overrides, dtype="float32",
                                       normalize=True, eval_conv_impl="", padding="clip"))


def corpora_config(variant: str) -> config_dict.ConfigDict:
    if variant == "paper":
        return config_dict.ConfigDict({k: dict(v, manual_dir="", data_dir="") for k, v in REAL_CORPORA.items()})
    sizes = dict(train_per_emotion=16, eval_per_emotion=4, test_per_emotion=4, min_seconds=0.6, max_seconds=1.2)
    return config_dict.ConfigDict({k: dict(name="synthetic_speech", **sizes, **v)
                                   for k, v in SYNTHETIC_CORPORA.items()})


def training_config(variant: str) -> config_dict.ConfigDict:
    """Batch, optimizer, schedule and early stopping of pre-finetuning (the trainer's top-level fields)."""
    paper = variant == "paper"
    return config_dict.ConfigDict(dict(
        batch_size=4 if paper else 16, eval_batch_size=8 if paper else 64, num_epochs=200 if paper else 8,
        eval_every_epochs=1,
        log_every_steps=100 if paper else 50, cache_audio=not paper,
        optimizer=dict(name="adamw", learning_rate=3e-5 if paper else 3e-3, weight_decay=0.0, b1=0.9, b2=0.999,
                       eps=1e-8, schedule="warmup_linear", warmup_fraction=0.1, clip_norm=1.0,
                       grad_accum_steps=4 if paper else 1),
        best=dict(metric="accuracy", mode="max", min_delta=0.02, patience=3),
        checkpoint=dict(every_steps=2000 if paper else 500, keep=2, async_save=False)))


def get_config(arg: str | None = None):
    variant, subset = parse_arg(arg)
    config = common.base_config()
    config.variant = variant
    config.subset = subset
    config.sample_rate = 16_000
    config.max_seconds = 5.0 if variant == "paper" else 0.25
    config.model = model_config(variant)
    config.corpora = corpora_config(variant)
    config.heads = "all"  # "reference": the heads stay at their random initialisation, as the released code
    config.scale_loss = True  # cross-entropy / ln(classes)
    config.classifier_heads = ()  # one (corpus, classes) per corpus, set by the stage from its corpora
    config.prefinetune = training_config(variant)
    return config
