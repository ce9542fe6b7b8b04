"""UniEmoX recipe (Chen, Sun, Liu, IEEE TIP 2025): CLIP-guided MAE pretraining on EmoSet, then fine-tuning.

    python -m experiments.uniemox                                          # tiny, synthetic scenes
    python -m experiments.uniemox --config=experiments/configs/uniemox.py:paper \
        --config.data.manual_dir=/data/EmoSet-118K --config.pretrained.mae=ckpt/mae_vit_large \
        --config.teacher.checkpoint=ckpt/clip_b16 --config.teacher.tokenizer=clip-vit-base-patch16/tokenizer.json \
        --config.finetune.manual_dirs.emotion6=/data/Emotion6 --workdir=runs/uniemox

Variants:
- `paper`: the released code's defaults (`main_pretrain.py`, `main_finetune.py` at d251937).
  Pretraining: a ViT-L/16 student at mask ratio 0.9 with MAE's 512 x 8 decoder, pixel targets (no norm_pix),
  OpenAI's CLIP ViT-B/16 teacher (frozen, bf16), unit loss weights, the EmoSet train + val splits; AdamW
  (0.9, 0.95), wd 0.05 except biases and norms, lr 1e-3 x batch / 256, 40 warm-up epochs then a half cosine
  to 0, 800 epochs. The released code runs 2 images per GPU on an unknown number of GPUs; batch 512 here
  (ViT-L at 10% visible patches is cheap; change it and the lr follows). It starts from an MAE checkpoint
  (`pretrained.mae`): the official `mae_pretrain_vit_large_full.pth` carries the decoder, converted by
  `python -m jaxemo.convert mae`; an encoder-only checkpoint leaves the decoder (and the fusion) random.
  A run of the released code continues from its `checkpoint.pth` (student, decoder and fusion):
  `python -m jaxemo.convert uemo checkpoint.pth ckpt/uemo`, then `--config.pretrained.uemo=ckpt/uemo`
  instead of `pretrained.mae` (the CLIP teacher still comes from `teacher.checkpoint`).
  Fine-tuning per dataset (Emotion6, FI, UnbiasedEmo, CAER-S, HECO, Emo8): 100 epochs, AdamW wd 0.05,
  lr 1e-3 x batch / 256 (batch 64), 5 warm-up epochs then cosine to 1e-6, layer-wise lr decay 0.75 (the
  reference parses it and never applies it), drop path 0.2, label smoothing 0.1, mixup 0.8 / cutmix 1.0,
  RandAugment m9-mstd0.5, random erasing 0.25; the best epoch by validation top-1, reported on test (top-1,
  top-3). `finetune.linear_probe=True` trains only the head.
- `tiny`: the same pipeline for a 2-core CPU on the synthetic scenes: no CLIP checkpoint can be downloaded,
  so a small CLIP teacher is first trained on the images and their prompts; pretraining then distils it; the
  fine-tuning runs from the pretrained encoder and from random weights on a small labelled set, same budget.
"""

from ml_collections import config_dict

from experiments.configs import common

EMOSET_CLASSES = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
FINETUNE_DATASETS = ("emotion6", "fi", "unbiased_emo", "caer_s", "heco", "emo8")


def _adamw(base_lr, warmup_epochs, **extra):
    # learning_rate = base_learning_rate x batch_size / 256, set by `uniemox.stage_config`
    return config_dict.ConfigDict({**dict(
        name="adamw", base_learning_rate=base_lr, learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.05, decay_exclude=("bias$", "scale$", "cls_token$", "pos_embed$", "mask_token$"),
        schedule="warmup_cosine", warmup_epochs=warmup_epochs, final_lr=0.0, clip_norm=0.0, grad_accum_steps=1),
        **extra})


def _stage(batch_size, num_epochs, optimizer, **extra):
    return config_dict.ConfigDict(dict(batch_size=batch_size, eval_batch_size=batch_size, num_epochs=num_epochs,
                                       optimizer=optimizer, **extra))


def get_config(arg: str = "tiny"):
    variant = common.parse_variant(arg, ("tiny", "paper"))
    config = common.base_config()
    config.variant = variant
    config.stage = "pretrain"  # the stage `uniemox.build_task` builds: teacher, pretrain or finetune
    config.model = config_dict.ConfigDict(dict(
        variant="L/16", image_size=224, width=config_dict.placeholder(int), depth=config_dict.placeholder(int),
        num_heads=config_dict.placeholder(int), mlp_dim=config_dict.placeholder(int), decoder_width=512,
        decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048, mask_ratio=0.9, norm_pix_loss=False,
        decoder_slice="patches", fusion="easyfusion", scan_layers=True, remat_policy="none", dtype="float32",
    ))
    # The frozen teacher: a checkpoint from `python -m jaxemo.convert clip|clip_hf` and its tokenizer.json. Both
    # empty: a teacher of `teacher.*` sizes is trained first on the pretraining data (`teacher.train`).
    # input: "clip" (CLIP's normalisation of the scene crop) or "reference" (the ImageNet-normalised crop).
    config.teacher = config_dict.ConfigDict(dict(
        variant="B/16", checkpoint="", tokenizer="", input="clip", dtype="bfloat16", context_length=77,
        vision_width=config_dict.placeholder(int), vision_depth=config_dict.placeholder(int),
        vision_heads=config_dict.placeholder(int), vision_mlp_dim=config_dict.placeholder(int),
        embed_dim=config_dict.placeholder(int), text_width=config_dict.placeholder(int),
        text_depth=config_dict.placeholder(int), text_heads=config_dict.placeholder(int),
        text_mlp_dim=config_dict.placeholder(int), tokenizer_vocab_size=512,  # when one is trained
        # the tokenizer's vocabulary and end-of-text id, set by the run once it has one (OpenAI's otherwise)
        vocab_size=config_dict.placeholder(int), eot_token_id=config_dict.placeholder(int),
        train=_stage(256, 30, _adamw(5e-4, 2, b2=0.98, weight_decay=0.1)),
    ))
    config.loss_weights = config_dict.ConfigDict(dict(reconstruction=1.0, similarity=1.0, contrastive=1.0))
    # The student's start, a jaxemo checkpoint from `python -m jaxemo.convert`: `mae` an MAE (`mae`, `mae_hf`;
    # the fusion starts fresh), or `uemo` a u-emo pretraining checkpoint (`uemo`: student, decoder and fusion, to
    # continue a run of the released code). One of them at most; the teacher comes from `teacher.*` either way.
    config.pretrained = config_dict.ConfigDict(dict(mae="", uemo=""))
    # Pretraining data: EmoSet (train + val), read from manual_dir; the text features are cached in cache_dir
    # (default <workdir>/text_features). prompt_objects: "names" lists each object name whole; "words" is the
    # reference's (multi-word names split into words: "Alarm, clock and Car"; jaxemo.systems.uniemox.prompts).
    config.data.update(dict(name="emoset", builder_config="256", train_split="train+val", eval_split="",
                            class_names=EMOSET_CLASSES, num_classes=8, cache_dir="", crop_scale=(0.2, 1.0),
                            prompt_objects="names"))
    config.pretrain = _stage(512, 800, _adamw(1e-3, 40, b2=0.95), log_every_steps=100, eval_every_steps=0)
    config.finetune = config_dict.ConfigDict(dict(
        datasets=FINETUNE_DATASETS, manual_dirs=config_dict.ConfigDict({d: "" for d in FINETUNE_DATASETS}),
        builder_config="256", linear_probe=False, compare_random_init=False, drop_path_rate=0.2,
        label_smoothing=0.1, mixup=0.8, cutmix=1.0, rand_augment=True, random_erasing=0.25, crop_pct=224 / 256,
        train=_stage(64, 100, _adamw(1e-3, 5, final_lr=1e-6, layer_decay=0.75, layer_decay_depth=0),
                     eval_every_epochs=1, log_every_steps=50),
    ))
    config.finetune.train.best = config_dict.ConfigDict(dict(metric="accuracy", mode="max", min_delta=0.0,
                                                            patience=0))
    config.checkpoint.update(every_steps=1000, keep=2)
    if variant == "tiny":
        config.model.update(variant="S/8", image_size=32, width=64, depth=4, num_heads=4, mlp_dim=128,
                            decoder_width=32, decoder_depth=2, decoder_heads=2, decoder_mlp_dim=64, mask_ratio=0.75)
        config.teacher.update(variant="S/8", dtype="float32", vision_width=64, vision_depth=3, vision_heads=4,
                              vision_mlp_dim=128, embed_dim=32, text_width=32, text_depth=2, text_heads=2,
                              text_mlp_dim=64, tokenizer_vocab_size=256)
        config.teacher.train.update(batch_size=64, eval_batch_size=128, num_epochs=12, log_every_steps=25,
                                    eval_every_steps=0)
        config.teacher.train.optimizer.update(base_learning_rate=8e-3, warmup_epochs=1)
        config.data.update(name="synthetic_scenes", builder_config="", image_size=48, num_poses=2, person_prob=0.8,
                           train_size=2048, eval_size=256, eval_split="test", noise=0.04)
        config.pretrain.update(batch_size=64, eval_batch_size=128, num_epochs=12, log_every_steps=25)
        config.pretrain.optimizer.update(base_learning_rate=4e-3, warmup_epochs=1)
        config.finetune.update(datasets=("synthetic_scenes",), compare_random_init=True, drop_path_rate=0.0,
                               rand_augment=False, random_erasing=0.0, mixup=0.0, cutmix=0.0)
        # The labelled set is small (the regime where pretraining matters), its images drawn afresh.
        config.finetune.synthetic = config_dict.ConfigDict(dict(train_size=256, eval_size=256, seed_offset=77))
        config.finetune.train.update(batch_size=32, eval_batch_size=128, num_epochs=15, log_every_steps=20)
        config.finetune.train.optimizer.update(base_learning_rate=2e-3, warmup_epochs=1)
        config.checkpoint.update(every_steps=200)
    return config
