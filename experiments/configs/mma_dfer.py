"""MMA-DFER recipe (Chumachenko et al., CVPRW 2024), as the reference's train_DFEW.sh / train_MAFW.sh.

    python -m experiments.mma_dfer                                         # tiny, synthetic clips
    python -m experiments.mma_dfer --config=experiments/configs/mma_dfer.py:dfew \
        --config.data.manual_dir=/data/DFEW --config.pretrained.image=mae_face_pretrain_vit_base.pth \
        --config.pretrained.audio=audiomae_pretrained.pth --workdir=runs/mma_dfer_dfew

Variants:
- `dfew` / `mafw`: the paper's recipe. AdamW lr 1e-4 and weight decay 1e-2 on every trainable parameter
  that gets a gradient; cosine over 25 epochs stepped per epoch, no warm-up; batch 8; cross-entropy; 16 TSN
  frames at 224 px; 512 x 128 fbank; 5 folds in one run. The last-epoch checkpoint is the reported one, and
  the best epoch (by UAR) is kept beside it.
- `tiny`: the same recipe scaled down, on the synthetic audio-visual clips (7 classes), for a 2-core CPU.
"""

from ml_collections import config_dict

from experiments.configs import common


def get_config(arg: str = "tiny"):
    variant = common.parse_variant(arg, ("tiny", "dfew", "mafw"))
    config = common.base_config()
    config.variant = variant
    config.model = config_dict.ConfigDict(dict(
        num_frames=16, image_size=224, audio_shape=(512, 128), patch_size=16, width=768, depth=12, num_heads=12,
        mlp_dim=3072, num_prompts=6, prompt_groups=2, latent_dim=128, fusion="bottleneck", num_fusion_tokens=4,
        fusion_layer=8, encoder_drop_path_rate=0.1, temporal_width=512, temporal_depth=1, temporal_heads=8,
        temporal_mlp_dim=1024, reference_unused_norms=False, remat_policy="none", dtype="float32",
    ))
    # MAE-Face and AudioMAE checkpoints (.pth, read with torch) to start from; empty = random encoders.
    # audio_grid: the patch grid AudioMAE was pretrained on (1024 x 128 fbanks), resized to ours.
    config.pretrained = config_dict.ConfigDict(dict(image="", audio="", audio_grid=(64, 8)))
    config.data.update(dict(name="dfew", builder_config="frames224", num_classes=7, folds=(1, 2, 3, 4, 5)))
    # modality_dropout: the probability that a training clip loses its video or its audio (one of the two,
    # equally likely; zeros, as `python -m experiments.robustness` makes a modality absent). Not the paper's: 0.
    config.augment = config_dict.ConfigDict(dict(brightness=0.5, crop_sampler="mma_dfer", modality_dropout=0.0))
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 25
    # `decay_exclude`: the LayerNorms that `model.reference_unused_norms` creates get no gradient in the
    # reference, so torch's AdamW never decays them; here they are kept out of the decay (nothing else matches).
    config.optimizer = config_dict.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, weight_decay=1e-2, b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.0,
        schedule="epoch_cosine", grad_accum_steps=1, decay_exclude=("_unused_norm_(scale|bias)$",),
    ))
    config.eval_every_epochs = 1  # the reference evaluates the test fold after every epoch (for logging)
    config.log_every_steps = 50
    config.checkpoint.update(every_steps=1000, keep=2)
    config.best.metric = "uar"
    # Keep the weight matmuls' outputs for the backward and recompute attention and the elementwise ops: half
    # the activation memory of "none" and a faster step on the CPU (BENCHMARKS.md); "full" for larger batches.
    config.model.remat_policy = "dots_no_batch"
    if variant == "mafw":
        config.data.update(name="mafw", num_classes=11)
    if variant == "tiny":
        config.model.update(image_size=32, audio_shape=(64, 128), patch_size=8, width=64, depth=4, num_heads=4,
                            mlp_dim=128, latent_dim=16, temporal_width=64, temporal_heads=4, temporal_mlp_dim=128,
                            encoder_drop_path_rate=0.0, remat_policy="none")
        config.data.update(name="synthetic_av_clips", builder_config="", num_classes=7, frame_size=40,
                           min_frames=8, max_frames=24, fbank_frames=64, train_size=512, eval_size=128,
                           noise=0.5, folds=(1, 2))
        config.batch_size = 16
        config.eval_batch_size = 32
        config.num_epochs = 6
        config.optimizer.update(learning_rate=2e-3, weight_decay=1e-2)
        config.log_every_steps = 8
        config.checkpoint.update(every_steps=64)
    return config
