"""UniEmoX's PyTorch twin for the benchmark (`python -m benchmarks.steps --system=uniemox`): the same fp32
train steps as `jaxemo.systems.uniemox.benchmark_case` builds, on transformers' models, randomly initialised.

Pretraining (`PretrainTask` cases), per step on the case's batch:
  views      per image, a random resized crop of the scene (scale `task.crop_scale`, torchvision's sampler) and
             the person box's crop (a second random crop where `has_person` is False), each resized to the
             model with `F.interpolate(bilinear, antialias=True)`, flipped at random, ImageNet-normalised for
             the student; the scene crop CLIP-normalised for the teacher (`task.teacher_input == "clip"`);
  student    transformers' `ViTMAEForPreTraining` (sdpa) at the sizes of `task.model.uniemox.student`: the masked
             encoder (`.vit`) and the decoder on the scene (the MAE reconstruction loss on hidden patches), the
             masked encoder alone on the person view; each view's encoder CLS (after the final LayerNorm) through
             `decoder.decoder_embed` (alpha, beta);
  fusion     ELU(Linear(LN(alpha) + LN(beta))), one LayerNorm for both (`jaxemo.models.uniemox.Fusion`);
  teacher    transformers' `CLIPVisionModelWithProjection` at the sizes of `task.model.teacher` (quick GELU,
             pre-LN, no patch bias), frozen (eval, no grad, float32: the JAX case may store it in bf16);
  losses     reconstruction + (1 - mean cos(fused, clip)) + the contrastive term of
             `jaxemo.models.uniemox.pretraining_losses` (cosine between the student's and CLIP's rows of
             logit_scale * unit(x) @ unit(text).T), with the task's weights;
  optimizer  AdamW (the case's lr, betas, eps, weight decay) over the student and the fusion, no weight decay
             on biases, norms, the CLS / mask tokens and position tables (the config's `decay_exclude`).
transformers 5's ViTMAE leaves its fixed sin-cos position tables at zero at init; that changes no timing.

Fine-tuning (`ClassificationTask` cases): `jaxemo.vit.ViT(pool="gap", fc_norm=True)` as transformers'
`ViTModel(add_pooling_layer=False)` (sdpa, learned positions) with its final LayerNorm replaced by the identity
(the JAX model has no final norm on the tokens), the mean of the patch tokens (CLS left out), an `fc_norm`
LayerNorm and a linear head. Per step: random resized crop (0.08-1) and flip per image, ImageNet normalisation,
timm-style random erasing (per-pixel noise, p = `finetune.random_erasing`), timm's batch-mode mixup / cutmix
(switch prob 0.5, lambda corrected to the box) with label-smoothed targets, soft-target cross-entropy, AdamW with
the config's layer-wise lr decay and `decay_exclude`. RandAugment is NOT done here (no torchvision / timm in
the environment; the JAX step does it), so the twin's fine-tuning step does a little less work than JAX's.

Gradient clipping follows `optimizer.clip_norm` (0 in the UniEmoX configs). `uemo_checkpoint` saves the
pretraining student and fusion as UniEmoX's released code (u-emo) does, under its names, for
`jaxemo.convert.uniemox`'s tests. Importing this module needs neither torch nor transformers.
"""

from __future__ import annotations

import functools
import math
import re
import types

FRAMEWORK = "PyTorch (transformers ViTMAE + CLIP / ViT, sdpa, no RandAugment)"

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CROP_ATTEMPTS = 10
# `decay_exclude` of experiments/configs/uniemox.py under transformers' names; parameters with ndim <= 1
# (biases, LayerNorm weights) are excluded too.
NO_DECAY_SUFFIXES = ("cls_token", "mask_token", "position_embeddings", "pos_embed")
BLOCK_NAME = re.compile(r"^vit\.(?:encoder\.)?layers?\.(\d+)\.")


# ------------------------------------------------------------------------------------------------ models


def hf_student(transformers, student):
    """`ViTMAEForPreTraining` with the sizes of a `jaxemo.models.mae.MAE`, randomly initialised, training."""
    config = transformers.ViTMAEConfig(
        hidden_size=student.width, num_hidden_layers=student.depth, num_attention_heads=student.num_heads,
        intermediate_size=student.mlp_dim, decoder_hidden_size=student.decoder_width,
        decoder_num_hidden_layers=student.decoder_depth, decoder_num_attention_heads=student.decoder_heads,
        decoder_intermediate_size=student.decoder_mlp_dim, image_size=student.image_size[0],
        patch_size=student.patch_size[0], num_channels=student.in_channels, mask_ratio=student.mask_ratio,
        norm_pix_loss=student.norm_pix_loss, layer_norm_eps=student.layer_norm_eps, qkv_bias=True,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    return transformers.ViTMAEForPreTraining(config).train()


def hf_teacher(transformers, teacher):
    """`CLIPVisionModelWithProjection` with the image-tower sizes of a `jaxemo.models.clip.CLIP`, frozen."""
    config = transformers.CLIPVisionConfig(
        hidden_size=teacher.vision_width, num_hidden_layers=teacher.vision_depth,
        num_attention_heads=teacher.vision_heads, intermediate_size=teacher.vision_mlp_dim,
        image_size=teacher.image_size, patch_size=teacher.patch_size, projection_dim=teacher.embed_dim,
        hidden_act="quick_gelu", layer_norm_eps=teacher.layer_norm_eps, attention_dropout=0.0,
        attn_implementation="sdpa")
    model = transformers.CLIPVisionModelWithProjection(config).float().eval()
    model.requires_grad_(False)
    return model


def hf_classifier(transformers, model):
    """The fine-tuning classifier (`modules().Classifier`) with the sizes of a `jaxemo.vit.ViT`."""
    config = transformers.ViTConfig(
        hidden_size=model.width, num_hidden_layers=model.depth, num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim, image_size=model.image_size[0], patch_size=model.patch_size[0],
        num_channels=model.in_channels, layer_norm_eps=model.layer_norm_eps, hidden_act="gelu",
        qkv_bias=model.qkv_bias, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa")
    return modules().Classifier(transformers.ViTModel(config, add_pooling_layer=False), model.num_classes,
                                model.layer_norm_eps).train()


@functools.cache
def modules() -> types.SimpleNamespace:
    """The `torch.nn.Module` classes (defined here so that importing the file needs no torch)."""
    import torch

    class Fusion(torch.nn.Module):
        """`ELU(Linear(LN(scene) + LN(person)))`, one LayerNorm for both inputs (torch's eps 1e-5)."""

        def __init__(self, width: int):
            super().__init__()
            self.norm = torch.nn.LayerNorm(width, eps=1e-5)
            self.proj = torch.nn.Linear(width, width)
            torch.nn.init.xavier_uniform_(self.proj.weight)
            torch.nn.init.zeros_(self.proj.bias)

        def forward(self, scene, person):
            return torch.nn.functional.elu(self.proj(self.norm(scene) + self.norm(person)))

    class Classifier(torch.nn.Module):
        """MAE's fine-tuning model: mean of the patch tokens, LayerNorm (`fc_norm`), linear head. The ViT's own
        final LayerNorm is replaced by the identity: `jaxemo.vit.ViT(fc_norm=True)` has none on the tokens."""

        def __init__(self, vit, num_classes: int, eps: float):
            super().__init__()
            self.vit = vit
            self.vit.layernorm = torch.nn.Identity()
            width = vit.config.hidden_size
            self.fc_norm = torch.nn.LayerNorm(width, eps=eps)
            self.head = torch.nn.Linear(width, num_classes)

        def forward(self, pixel_values):
            tokens = self.vit(pixel_values=pixel_values).last_hidden_state
            return self.head(self.fc_norm(tokens[:, 1:].mean(dim=1)))

    return types.SimpleNamespace(Fusion=Fusion, Classifier=Classifier)


# ------------------------------------------------------------------------------------------------ u-emo's names


# The twin's modules under the names of UniEmoX's released code (chincharles/u-emo at d251937): its student is
# `models_mae.MaskedAutoencoderViT` (official MAE / timm names, q, k, v fused in `attn.qkv`), its fusion
# `attention_fusion.AttentionFusion` (`bn`: the LayerNorm, `linear`). `jaxemo.convert.uniemox` reads these.
UEMO_BLOCK_NAMES = {"attention.o_proj": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
                    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}  # transformers 5 -> u-emo, per block
UEMO_FUSION_NAMES = {"norm": "bn", "proj": "linear"}


def uemo_state_dicts(torch, student, fusion) -> tuple[dict, dict]:
    """(model, att_fusion): the state dicts of the twin's student (`hf_student`, transformers 5's names) and
    `modules().Fusion` as u-emo's `MaskedAutoencoderViT` and `AttentionFusion` name them (tensors copied)."""
    s = {k: v.detach().clone() for k, v in student.state_dict().items()}
    if "vit.layers.0.attention.q_proj.weight" not in s:
        raise ValueError("expected transformers 5's ViTMAEForPreTraining names (vit.layers.{i}.attention.q_proj)")
    used = set()

    def take(name):
        used.add(name)
        return s[name]

    out = {"cls_token": take("vit.embeddings.cls_token"), "pos_embed": take("vit.embeddings.position_embeddings"),
           "mask_token": take("decoder.mask_token"), "decoder_pos_embed": take("decoder.decoder_pos_embed")}
    pairs = [("patch_embed.proj", "vit.embeddings.patch_embeddings.projection"), ("norm", "vit.layernorm")]
    pairs += [(name, f"decoder.{name}") for name in ("decoder_embed", "decoder_norm", "decoder_pred")]
    config = student.config
    for theirs, ours, depth in (("vit.layers", "blocks", config.num_hidden_layers),
                                ("decoder.decoder_layers", "decoder_blocks", config.decoder_num_hidden_layers)):
        for i in range(depth):
            at, to = f"{theirs}.{i}.", f"{ours}.{i}."
            for leaf in ("weight", "bias"):
                out[f"{to}attn.qkv.{leaf}"] = torch.cat([take(f"{at}attention.{p}_proj.{leaf}") for p in "qkv"])
            pairs += [(to + mine, at + hf) for hf, mine in UEMO_BLOCK_NAMES.items()]
    for ours, theirs in pairs:
        for leaf in ("weight", "bias"):
            out[f"{ours}.{leaf}"] = take(f"{theirs}.{leaf}")
    if used != set(s):
        raise ValueError(f"student keys without a u-emo name: {sorted(set(s) - used)}")
    fused = {}
    for name, value in fusion.state_dict().items():
        module, leaf = name.split(".", 1)
        fused[f"{UEMO_FUSION_NAMES[module]}.{leaf}"] = value.detach().clone()
    return out, fused


def uemo_checkpoint(torch, student, fusion, args, epoch: int, optimizer=None, distributed: bool = False) -> dict:
    """What u-emo's `main_pretrain.py` saves as `checkpoint.pth` after an epoch, for the twin's student and
    fusion: {"model", "att_fusion", "optimizer", "epoch", "args"}; `args` is the run's argparse.Namespace, and
    `distributed` prefixes both state dicts with `module.`, as its DDP wrappers' state dicts are."""
    model, fused = uemo_state_dicts(torch, student, fusion)
    if distributed:
        model, fused = ({f"module.{k}": v for k, v in sd.items()} for sd in (model, fused))
    return {"model": model, "att_fusion": fused, "optimizer": optimizer.state_dict() if optimizer else {},
            "epoch": epoch, "args": args}


# ------------------------------------------------------------------------------------------------ augmentation


def sample_crop(u, height: int, width: int, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision's `RandomResizedCrop.get_params` from `CROP_ATTEMPTS` rows of 4 uniforms (plain floats):
    (top, left, h, w); the centre crop of the clamped aspect ratio when no attempt fits."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for u_area, u_ratio, u_top, u_left in u:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def box_crop(box, height: int, width: int):
    """Normalised xyxy -> (top, left, h, w) pixels covering the box, at least one pixel (`pretrain.box_crop`)."""
    top = min(max(math.floor(box[1] * height), 0), height - 1)
    left = min(max(math.floor(box[0] * width), 0), width - 1)
    bottom = min(max(math.ceil(box[3] * height), 1), height)
    right = min(max(math.ceil(box[2] * width), 1), width)
    return top, left, max(bottom - top, 1), max(right - left, 1)


def crop_resize(torch, image, crop, size: int):
    """One float image [C, H, W], crop (top, left, h, w) -> [C, size, size], bilinear with antialiasing."""
    top, left, h, w = crop
    patch = image[None, :, top:top + h, left:left + w]
    return torch.nn.functional.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)[0]


def random_flip(torch, x):
    """Each image of [B, C, H, W] mirrored left-right with probability 1/2."""
    flip = torch.rand(x.shape[0]) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(torch, x01, mean, std):
    return (x01 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def random_resized_crops(torch, images, size: int, scale):
    """[B, C, H, W] float -> [B, C, size, size]: one random resized crop per image."""
    height, width = images.shape[-2:]
    uniforms = torch.rand(images.shape[0], CROP_ATTEMPTS, 4).tolist()
    return torch.stack([crop_resize(torch, image, sample_crop(u, height, width, scale), size)
                        for image, u in zip(images, uniforms)])


def random_erasing(torch, x, prob: float, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """timm's `RandomErasing(mode="pixel", max_count=1)` per image of [B, C, H, W] (normalised): with
    probability `prob`, one box of N(0, 1) noise per pixel."""
    if prob <= 0:
        return x
    batch, channels, height, width = x.shape
    draws = torch.rand(batch, 1 + 4 * CROP_ATTEMPTS).tolist()
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    out = x.clone()
    for i, u in enumerate(draws):
        if u[0] >= prob:
            continue
        for a in range(CROP_ATTEMPTS):
            u_area, u_aspect, u_top, u_left = u[1 + 4 * a:5 + 4 * a]
            target = height * width * (min_area + (max_area - min_area) * u_area)
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u_aspect)
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top = min(int(u_top * (height - h + 1)), height - h)
                left = min(int(u_left * (width - w + 1)), width - w)
                out[i, :, top:top + h, left:left + w] = torch.randn(channels, h, w)
                break
    return out


def one_hot_smoothed(torch, labels, num_classes: int, smoothing: float):
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off).scatter_(1, labels[:, None], 1.0 - smoothing + off)


def mixup_cutmix(torch, x, labels, num_classes: int, mixup_alpha: float, cutmix_alpha: float, smoothing: float,
                 switch_prob: float = 0.5):
    """timm's `Mixup(mode="batch", prob=1, correct_lam=True)`: the batch mixed with itself reversed, by mixup
    or (with `switch_prob` when both alphas are positive) cutmix; targets mixed alike."""
    height, width = x.shape[-2:]
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(())) < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample())
    partner = x.flip(0)
    if use_cutmix:
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = (int(v) for v in torch.randint(0, height, (1,)).tolist() + torch.randint(0, width, (1,)).tolist())
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    else:
        x = x * lam + partner * (1.0 - lam)
    y = one_hot_smoothed(torch, labels, num_classes, smoothing)
    return x, y * lam + y.flip(0) * (1.0 - lam)


# ------------------------------------------------------------------------------------------------ optimizer


def no_decay(name: str, param) -> bool:
    return param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)


def adamw(torch, named_params, o, lr_scale=None):
    """AdamW of `config.optimizer` `o` over (name, parameter) pairs that require grad: groups by weight decay
    (`no_decay`) and, with `lr_scale(name)`, by learning-rate factor (layer-wise decay)."""
    groups = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        scale = lr_scale(name) if lr_scale else 1.0
        decay = 0.0 if no_decay(name, param) else o.weight_decay
        groups.setdefault((scale, decay), []).append(param)
    param_groups = [{"params": params, "lr": o.learning_rate * scale, "weight_decay": decay}
                    for (scale, decay), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.get("eps", 1e-8))


def layer_decay_scale(decay: float, depth: int):
    """`jaxemo.train.optim.layer_decay_factor` under transformers' `ViTModel` names: the embeddings decay **
    (depth + 1), block i decay ** (depth - i), the rest (fc_norm, head) 1."""

    def scale(name: str) -> float:
        if name.startswith("vit.embeddings."):
            return decay ** (depth + 1)
        block = BLOCK_NAME.match(name)  # transformers 5: vit.layers.<i>.; 4: vit.encoder.layer.<i>.
        if block:
            return decay ** (depth - int(block.group(1)))
        return 1.0

    return scale


def _unit(torch, x):
    return torch.nn.functional.normalize(x, dim=-1, eps=1e-12)


# ------------------------------------------------------------------------------------------------ steps


def benchmark_steps(torch, case) -> dict:
    """{"train": one full fp32 step} on the case's batch: the pretraining step for a `PretrainTask` case, the
    fine-tuning step otherwise. Each call returns the step's loss (a 0-d tensor)."""
    from jaxemo.systems.uniemox.pretrain import PretrainTask

    if isinstance(case.task, PretrainTask):
        return pretrain_steps(torch, case)
    return finetune_steps(torch, case)


def pretrain_steps(torch, case) -> dict:
    import transformers

    task = case.task
    student_sizes, teacher_sizes = task.model.uniemox.student, task.model.teacher
    if student_sizes.decoder_slice != "patches":
        raise ValueError("the twin has only decoder_slice='patches' (transformers' decoder drops the CLS)")
    student = hf_student(transformers, student_sizes)
    teacher = hf_teacher(transformers, teacher_sizes)
    fusion = modules().Fusion(student_sizes.decoder_width).train() if task.model.uniemox.fusion == "easyfusion" \
        else None
    named = list(student.named_parameters()) + (list(fusion.named_parameters(prefix="fusion")) if fusion else [])
    o = case.config.optimizer
    optimizer = adamw(torch, named, o)
    trainable = [p for _, p in named if p.requires_grad]
    logit_scale = torch.tensor(math.log(1 / 0.07))  # the teacher's stored log scale at init (frozen)
    weights, size = task.weights, student_sizes.image_size[0]

    images = torch.from_numpy(case.batch["image"]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    boxes = case.batch["person_box"].tolist()
    has_person = case.batch["has_person"].tolist()
    text = torch.from_numpy(case.batch["text_feature"]).float()

    def views():
        x = images.float()
        height, width = x.shape[-2:]
        draws = torch.rand(x.shape[0], 2, CROP_ATTEMPTS, 4).tolist()
        scene, person = [], []
        for image, (u_scene, u_person), box, has in zip(x, draws, boxes, has_person):
            scene.append(crop_resize(torch, image, sample_crop(u_scene, height, width, task.crop_scale), size))
            crop = box_crop(box, height, width) if has else sample_crop(u_person, height, width, task.crop_scale)
            person.append(crop_resize(torch, image, crop, size))
        scene = random_flip(torch, torch.stack(scene) / 255.0)
        person = random_flip(torch, torch.stack(person) / 255.0)
        student_scene = normalize(torch, scene, IMAGENET_MEAN, IMAGENET_STD)
        teacher_scene = normalize(torch, scene, CLIP_MEAN, CLIP_STD) if task.teacher_input == "clip" \
            else student_scene
        return student_scene, normalize(torch, person, IMAGENET_MEAN, IMAGENET_STD), teacher_scene

    def train():
        scene, person, teacher_scene = views()
        # the scene: masked encoder, decoder, MAE loss (as ViTMAEForPreTraining.forward, which hides the latent)
        encoded = student.vit(pixel_values=scene)
        pred = student.decoder(encoded.last_hidden_state, encoded.ids_restore).logits
        target = student.patchify(scene)
        if student.config.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(-1)
        reconstruction = (per_patch * encoded.mask).sum() / encoded.mask.sum()
        alpha = student.decoder.decoder_embed(encoded.last_hidden_state[:, 0])
        # the person: the masked encoder only
        beta = student.decoder.decoder_embed(student.vit(pixel_values=person).last_hidden_state[:, 0])
        fused = fusion(alpha, beta) if fusion is not None else alpha
        with torch.no_grad():
            clip_image = teacher(pixel_values=teacher_scene).image_embeds.float()
        s, t, txt = _unit(torch, fused), _unit(torch, clip_image), _unit(torch, text)
        similarity = 1.0 - (s * t).sum(-1).mean()
        scale = logit_scale.exp()
        student_rows, teacher_rows = scale * s @ txt.T, scale * t @ txt.T
        contrastive = 1.0 - (_unit(torch, student_rows) * _unit(torch, teacher_rows)).sum(-1).mean()
        loss = (weights.reconstruction * reconstruction + weights.similarity * similarity
                + weights.contrastive * contrastive)
        return update(torch, loss, trainable, optimizer, o.get("clip_norm"))

    train.student, train.teacher, train.fusion = student, teacher, fusion  # for tests
    return {"train": train}


def update(torch, loss, trainable, optimizer, clip_norm) -> "torch.Tensor":
    """Backward, optional clipping, the optimizer's step: the end of both twins' steps."""
    loss.backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(trainable, clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def finetune_steps(torch, case) -> dict:
    import transformers

    task, config = case.task, case.config
    f, o = config.finetune, config.optimizer
    model = hf_classifier(transformers, task.model)
    num_classes, size = task.num_classes, task.model.image_size[0]
    lr_scale = layer_decay_scale(float(o.layer_decay), int(o.layer_decay_depth)) if o.get("layer_decay") else None
    optimizer = adamw(torch, model.named_parameters(), o, lr_scale)
    trainable = [p for p in model.parameters() if p.requires_grad]
    mixes = f.mixup > 0 or f.cutmix > 0

    images = torch.from_numpy(case.batch["image"]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    labels = torch.from_numpy(case.batch["label"]).long()

    def train():
        x = random_flip(torch, random_resized_crops(torch, images.float(), size, (0.08, 1.0)) / 255.0)
        # (RandAugment of the JAX step would come here: not done in the twin)
        x = random_erasing(torch, normalize(torch, x, IMAGENET_MEAN, IMAGENET_STD), float(f.random_erasing))
        if mixes:
            x, targets = mixup_cutmix(torch, x, labels, num_classes, float(f.mixup), float(f.cutmix),
                                      float(f.label_smoothing))
        else:
            targets = one_hot_smoothed(torch, labels, num_classes, float(f.label_smoothing))
        logits = model(x)
        loss = -(targets * torch.nn.functional.log_softmax(logits, dim=-1)).sum(-1).mean()
        return update(torch, loss, trainable, optimizer, o.get("clip_norm"))

    train.model = model  # for tests
    return {"train": train}
