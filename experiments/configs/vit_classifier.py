"""ViT image classifier on the learnable synthetic images (jaxemo's default job until MMA-DFER lands).

    python -m experiments.vit_classifier --config=experiments/configs/vit_classifier.py:tiny
    python -m experiments.vit_classifier --config=experiments/configs/vit_classifier.py:paper \
        --config.batch_size=512 --workdir=/tmp/vit_b16

Variants: `tiny` (a 4-layer width-64 ViT on 32 px images: about a minute on a 2-core CPU) and `paper`
(ViT-B/16 at 224 px with the DeiT recipe: AdamW, lr 5e-4 x batch/512, wd 0.05, 5 warm-up epochs, cosine).
"""

from ml_collections import config_dict

from experiments.configs import common


def get_config(arg: str = "tiny"):
    variant = common.parse_variant(arg, ("tiny", "paper"))
    config = common.base_config()
    config.variant = variant
    image_size = config_dict.FieldReference(224)  # shared by the model and the data
    config.model = config_dict.ConfigDict(dict(
        variant="B/16", image_size=image_size, in_channels=3, pool="token", pos_embedding="learned",
        width=config_dict.placeholder(int), depth=config_dict.placeholder(int),
        num_heads=config_dict.placeholder(int), mlp_dim=config_dict.placeholder(int),
        drop_path_rate=0.1, dropout_rate=0.0, scan_layers=True, remat_policy="none",
        dtype="float32",
    ))
    config.data.update(dict(name="synthetic_images", num_classes=10, train_size=100_000, eval_size=10_000,
                            noise=0.25, channels=3, train_split="train", eval_split="test"))
    config.data.image_size = image_size
    config.batch_size = 512
    config.eval_batch_size = 512
    config.num_epochs = 300
    config.optimizer = config_dict.ConfigDict(dict(
        name="adamw", learning_rate=5e-4, weight_decay=0.05, b1=0.9, b2=0.999, clip_norm=1.0,
        schedule="warmup_cosine", warmup_steps=5 * 100_000 // 512, grad_accum_steps=1,
    ))
    if variant == "tiny":
        image_size.set(32)
        config.model.update(variant="Ti/8", width=64, depth=4, num_heads=4, mlp_dim=128,
                            drop_path_rate=0.0)
        config.data.update(train_size=8192, eval_size=1024)
        config.batch_size = 64
        config.eval_batch_size = 256
        config.num_epochs = 5
        config.optimizer.update(learning_rate=2e-3, weight_decay=0.01, warmup_steps=50)
        config.log_every_steps = 50
        config.eval_every_steps = 320
        config.checkpoint.every_steps = 200
    return config
