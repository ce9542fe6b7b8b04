"""On-device augmentation in JAX: pure functions of (key, batch), static shapes, jit- and vmap-friendly.

Images are [B, H, W, C] and clips [B, T, H, W, C] (channels last); every random choice is one per leading
batch element, so all frames of a clip share their crop, flip and brightness factor. Pixel values are in
[0, max_value] (`max_value` 1.0 or 255.0; uint8 input is accepted and returned as float32).

What is here, and what it follows:

* `random_resized_crop`: torchvision `RandomResizedCrop.get_params` (scale 0.08-1, log-uniform ratio
  3/4-4/3, 10 attempts, centre-crop fallback) or, with `sampler="mma_dfer"`, the MMA-DFER reference's
  `GroupRandomSizedCrop` (uniform ratio, width/height swapped with p=0.5, 10 attempts, fallback: the
  largest square at a random offset, i.e. resize-shorter-side + random crop). The crop is resized with
  PIL's bilinear filter (antialiased when shrinking, as PIL and torchvision's `antialias=True`; plain
  half-pixel bilinear when enlarging), written as two dense interpolation matrices, so a crop of any size is
  two matmuls of static shape. PIL rounds to uint8 between its two passes; this stays in float.
* `random_flip`: torchvision/reference horizontal flip, p=0.5 per image or clip.
* `brightness_jitter`: torchvision `ColorJitter(brightness=b)`: one factor per clip in [max(0, 1-b), 1+b],
  multiply, clamp to [0, max_value] (PIL rounds to uint8; this stays in float).
* `mixup_cutmix`: timm `Mixup` in its default `mode="batch"`: one lambda per batch, partner = the batch
  reversed, cutmix box from `rand_bbox` with `correct_lam`, one-hot targets with label smoothing.
* `rand_augment`: timm `rand-m9-mstd0.5-inc1`: the 15 "increasing" ops (AutoContrast, Equalize, Invert,
  Rotate, PosterizeIncreasing, SolarizeIncreasing, SolarizeAdd, Color/Contrast/Brightness/Sharpness
  Increasing, ShearX/Y, TranslateX/YRel), 2 per image drawn with replacement, each applied with p=0.5 at a
  magnitude drawn from N(m, mstd) clipped to [0, 10], with timm's level-to-argument maps, PIL's op
  definitions and values rounded to integers after every op (PIL works in uint8). Difference: geometric
  ops sample bilinearly (PIL's convention: points outside the image take the fill colour); timm uses
  bicubic when the model's interpolation is bicubic, as in the UniEmoX recipe.
* `random_erasing`: timm `RandomErasing` (p, area 0.02-1/3, log-uniform aspect 0.3-1/0.3, 'pixel' mode =
  per-pixel N(0, 1) noise, 'rand' = per-channel, 'const' = 0, one region, 10 attempts). As in timm, apply
  it after normalisation (the noise is in normalised units).
* `mma_dfer_train_clips` / `mma_dfer_eval_clips`: the MMA-DFER train and test video transforms in the
  reference's order (brightness 0.5 -> random sized crop -> flip -> /255; eval: resize -> /255).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

IMAGENET_MEAN_255 = (124, 116, 104)  # timm's RandAugment fill: round(255 * IMAGENET_DEFAULT_MEAN)
CROP_ATTEMPTS = 10


def _as_float(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) if not jnp.issubdtype(images.dtype, jnp.floating) else images


def _batch_keys(key: jax.Array, n: int) -> jax.Array:
    return jax.random.split(key, n)


# ------------------------------------------------------------------------------------------------ crop params


def crop_from_uniforms(u: jax.Array, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                       sampler: str = "torchvision") -> jax.Array:
    """(top, left, crop_h, crop_w) int32 from uniforms `u` [10, 5] in [0, 1): one row per attempt.

    torchvision (`RandomResizedCrop.get_params`), attempt k uses u[k, 0] for the area fraction, u[k, 1]
    for the log-ratio, u[k, 2] and u[k, 3] for `randint(0, H - h + 1)` and `randint(0, W - w + 1)`;
    the first attempt with 0 < w <= W and 0 < h <= H wins, else the centre crop of the largest box whose
    ratio is within bounds. "mma_dfer" (`GroupRandomSizedCrop`): linear ratio, u[k, 4] < 0.5 swaps w and h,
    the test is w <= W and h <= H, offsets as above; fallback: a min(H, W) square at offset u[0, 2].
    Rounding is Python's `round` (half to even), as in both references.
    """
    area = float(height * width)
    scale_u, ratio_u, top_u, left_u, swap_u = (u[:, i] for i in range(5))
    target = area * (scale[0] + (scale[1] - scale[0]) * scale_u)
    if sampler == "torchvision":
        log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
        aspect = jnp.exp(log_lo + (log_hi - log_lo) * ratio_u)
    elif sampler == "mma_dfer":
        aspect = ratio[0] + (ratio[1] - ratio[0]) * ratio_u
    else:
        raise ValueError(f"sampler={sampler!r}; expected 'torchvision' or 'mma_dfer'")
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    if sampler == "mma_dfer":
        swap = swap_u < 0.5
        w, h = jnp.where(swap, h, w), jnp.where(swap, w, h)
        valid = (w <= width) & (h <= height)
    else:
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = jnp.minimum((top_u * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum((left_u * (width - w + 1)).astype(jnp.int32), width - w)
    first = jnp.argmax(valid)  # index of the first valid attempt (0 if none)
    found = valid[first]
    if sampler == "torchvision":
        in_ratio = width / height
        if in_ratio < min(ratio):
            fw, fh = width, round(width / min(ratio))
        elif in_ratio > max(ratio):
            fw, fh = round(height * max(ratio)), height
        else:
            fw, fh = width, height
        fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.int32)
    else:
        side = min(height, width)
        offset = jnp.minimum((u[0, 2] * (max(height, width) - side + 1)).astype(jnp.int32),
                             max(height, width) - side)
        zero = jnp.int32(0)
        fallback = jnp.stack([offset if height > width else zero, offset if width > height else zero,
                              jnp.int32(side), jnp.int32(side)])
    chosen = jnp.stack([top[first], left[first], h[first], w[first]])
    return jnp.where(found, chosen, fallback)


def sample_crop(key: jax.Array, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                sampler: str = "torchvision") -> jax.Array:
    """(top, left, crop_h, crop_w) int32 for one image of static size (height, width)."""
    u = jax.random.uniform(key, (CROP_ATTEMPTS, 5))
    return crop_from_uniforms(u, height, width, scale, ratio, sampler)


# ------------------------------------------------------------------------------------------------ resize


def resize_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int,
                   antialias: bool = True) -> jax.Array:
    """[out_size, in_size] bilinear weights resampling input rows [start, start + length) to `out_size`.

    PIL's `ImagingResample` with the bilinear (triangle) filter: output i is centred at input
    `(i + 0.5) * length / out_size` (crop coordinates); with `antialias`, the filter widens by the scale
    factor when shrinking. Rows are normalised over the pixels inside the crop, which also gives
    torch's `interpolate(mode="bilinear", align_corners=False)` edge clamping without antialias.
    """
    length_f = jnp.asarray(length, jnp.float32)
    scale = length_f / out_size
    support = jnp.maximum(scale, 1.0) if antialias else jnp.float32(1.0)
    centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # in crop coordinates
    position = jnp.arange(in_size, dtype=jnp.float32) - jnp.asarray(start, jnp.float32) + 0.5
    inside = (position > 0) & (position < length_f + 0.5)  # input pixel lies in the crop
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(position[None, :] - centre[:, None]) / support)
    weights = jnp.where(inside[None, :], weights, 0.0)
    return weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def crop_and_resize(image: jax.Array, crop: jax.Array, size: tuple[int, int], antialias: bool = True,
                    precision=jax.lax.Precision.HIGHEST) -> jax.Array:
    """Crops `image` [..., H, W, C] (leading axes, e.g. frames, share the crop) to `crop` = (top, left, h,
    w) and resizes it to `size` = (out_h, out_w) with `resize_weights`; float32 out."""
    height, width = image.shape[-3], image.shape[-2]
    wy = resize_weights(crop[0], crop[2], height, size[0], antialias)
    wx = resize_weights(crop[1], crop[3], width, size[1], antialias)
    image = _as_float(image)
    out = jnp.einsum("oh,...hwc->...owc", wy, image, precision=precision)
    return jnp.einsum("pw,...owc->...opc", wx, out, precision=precision)


def _size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def resize(images: jax.Array, size, antialias: bool = True) -> jax.Array:
    """Bilinear (PIL) resize of [..., H, W, C] to `size` (int or (h, w)); float32 out."""
    height, width = images.shape[-3], images.shape[-2]
    crop = jnp.array([0, 0, height, width], jnp.int32)
    return crop_and_resize(images, crop, _size(size), antialias)


def random_resized_crop(key: jax.Array, images: jax.Array, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        sampler: str = "torchvision", antialias: bool = True) -> jax.Array:
    """One random crop per batch element of `images` [B, H, W, C] or clips [B, T, H, W, C] (shared by the
    clip's frames), resized to `size`; float32 [B, (T,) out_h, out_w, C]."""
    height, width = images.shape[-3], images.shape[-2]
    keys = _batch_keys(key, images.shape[0])
    crops = jax.vmap(lambda k: sample_crop(k, height, width, scale, ratio, sampler))(keys)
    return jax.vmap(lambda x, c: crop_and_resize(x, c, _size(size), antialias))(images, crops)


# ------------------------------------------------------------------------------------------------ flip, colour


def random_flip(key: jax.Array, images: jax.Array, prob: float = 0.5) -> jax.Array:
    """Horizontal flip of each batch element (all frames of a clip together) with probability `prob`."""
    flip = jax.random.bernoulli(key, prob, (images.shape[0],))
    flip = flip.reshape((-1,) + (1,) * (images.ndim - 1))
    return jnp.where(flip, jnp.flip(images, axis=-2), images)


def brightness_jitter(key: jax.Array, images: jax.Array, brightness: float,
                      max_value: float = 1.0) -> jax.Array:
    """torchvision ColorJitter(brightness): x * f clamped to [0, max_value], f ~ U[max(0, 1-b), 1+b] per
    batch element (clip)."""
    low, high = max(0.0, 1.0 - brightness), 1.0 + brightness
    factor = jax.random.uniform(key, (images.shape[0],), minval=low, maxval=high)
    factor = factor.reshape((-1,) + (1,) * (images.ndim - 1))
    return jnp.clip(_as_float(images) * factor, 0.0, max_value)


# ------------------------------------------------------------------------------------------------ mixup


def one_hot_smoothed(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """timm's `one_hot(on=1 - s + s/K, off=s/K)`."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """timm `rand_bbox`: (y_lo, y_hi, x_lo, x_hi) of a box of side sqrt(1 - lam) times the image's,
    centred uniformly in the image and clipped to it."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = (height * ratio).astype(jnp.int32)
    cut_w = (width * ratio).astype(jnp.int32)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    return jnp.stack([jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
                      jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)])


def mixup_cutmix(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, correct_lam: bool = True
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """timm `Mixup(mode="batch")`: (mixed images float32, soft targets [B, K] float32, lambda).

    With probability `prob` the batch is mixed with itself reversed: mixup (`lam * x + (1 - lam) * x[::-1]`,
    lam ~ Beta(mixup_alpha)) or, with probability `switch_prob` when both alphas are positive, cutmix (a
    box of `x[::-1]` pasted into `x`, lam ~ Beta(cutmix_alpha), then corrected to the box's true area).
    Targets are `lam * y + (1 - lam) * y[::-1]` of label-smoothed one-hots. Images may be [B, H, W, C] or
    clips [B, T, H, W, C] (one box for every frame). The batch must be even, as timm requires.
    """
    batch = images.shape[0]
    if batch % 2:
        raise ValueError(f"mixup/cutmix needs an even batch (got {batch}), as timm's Mixup does")
    if isinstance(mixup_alpha, (int, float)) and isinstance(cutmix_alpha, (int, float)) \
            and mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mixup_cutmix: one of mixup_alpha and cutmix_alpha must be positive")
    # Hyper-parameters may be traced (one compilation for any values, e.g. mixup switched off late in
    # training), so the "which alphas are on" logic is jnp, not Python.
    mixup_alpha, cutmix_alpha = jnp.float32(mixup_alpha), jnp.float32(cutmix_alpha)
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
    apply = jax.random.uniform(k_apply) < prob
    both = (mixup_alpha > 0) & (cutmix_alpha > 0)
    use_cutmix = jnp.where(both, jax.random.uniform(k_switch) < switch_prob, cutmix_alpha > 0)
    safe_mix = jnp.where(mixup_alpha > 0, mixup_alpha, 1.0)
    safe_cut = jnp.where(cutmix_alpha > 0, cutmix_alpha, 1.0)
    lam_mix = jax.random.beta(k_mix, safe_mix, safe_mix)
    lam_cut = jax.random.beta(k_cut, safe_cut, safe_cut)
    height, width = images.shape[-3], images.shape[-2]
    box = cutmix_box(k_box, lam_cut, height, width)
    if correct_lam:
        lam_cut = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / float(height * width)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0).astype(jnp.float32)

    x = _as_float(images)
    partner = jnp.flip(x, axis=0)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    in_box = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
    cut = jnp.where(in_box[:, :, None], partner, x)
    mixed = x * lam + partner * (1.0 - lam)
    out = jnp.where(apply & use_cutmix, cut, jnp.where(apply, mixed, x))

    y = one_hot_smoothed(labels, num_classes, label_smoothing)
    targets = y * lam + jnp.flip(y, axis=0) * (1.0 - lam)
    return out, targets, lam


# ------------------------------------------------------------------------------------------------ RandAugment
# Every op maps an image [H, W, C] float32 with values in 0..255 and one float argument to an image.


def _quantize(x):
    return jnp.clip(jnp.round(x), 0.0, 255.0)


def _grayscale(img):
    """PIL "L": round(0.299 R + 0.587 G + 0.114 B) (ITU-R 601-2 luma), [H, W]."""
    if img.shape[-1] == 1:
        return img[..., 0]
    return jnp.round(img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114)


def _blend(degenerate, img, factor):
    return _quantize(degenerate + factor * (img - degenerate))


def op_auto_contrast(img, _arg=None):
    lo = img.min(axis=(0, 1), keepdims=True)
    hi = img.max(axis=(0, 1), keepdims=True)
    scale = 255.0 / jnp.maximum(hi - lo, 1.0)
    out = jnp.clip(jnp.floor(img * scale - lo * scale), 0.0, 255.0)
    return jnp.where(hi > lo, out, img)


def _equalize_channel(channel):
    values = channel.astype(jnp.int32).reshape(-1)
    hist = jnp.zeros(256, jnp.int32).at[values].add(1)
    last = hist[values.max()]  # count of the highest value present
    step = (values.size - last) // 255
    before = jnp.cumsum(hist) - hist  # pixels strictly below each value
    lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
    nonzero_bins = (hist > 0).sum()
    out = lut[values].reshape(channel.shape).astype(jnp.float32)
    return jnp.where((nonzero_bins <= 1) | (step == 0), channel, out)


def op_equalize(img, _arg=None):
    return jnp.stack([_equalize_channel(img[..., c]) for c in range(img.shape[-1])], axis=-1)


def op_invert(img, _arg=None):
    return 255.0 - img


def op_posterize(img, bits):
    shift = jnp.exp2(8.0 - bits)
    out = jnp.floor(img / shift) * shift
    return jnp.where(bits >= 8, img, out)


def op_solarize(img, threshold):
    return jnp.where(img < threshold, img, 255.0 - img)


def op_solarize_add(img, add, threshold=128.0):
    return jnp.where(img < threshold, jnp.minimum(img + add, 255.0), img)


def op_color(img, factor):
    return _blend(_grayscale(img)[..., None], img, factor)


def op_contrast(img, factor):
    mean = jnp.floor(_grayscale(img).mean() + 0.5)
    return _blend(mean, img, factor)


def op_brightness(img, factor):
    return _blend(0.0, img, factor)


def op_sharpness(img, factor):
    """PIL ImageEnhance.Sharpness: blend with the 3x3 SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13),
    border pixels taken from the image."""
    height, width = img.shape[0], img.shape[1]
    padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    total = sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))
    smooth = _quantize((total + 4.0 * img) / 13.0)
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    return _blend(jnp.where(interior, smooth, img), img, factor)


def affine_warp(img, matrix, fill) -> jax.Array:
    """PIL `Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor=fill)`: the output pixel centred
    at (x, y) (centres at i + 0.5) reads the input at (a x + b y + c, d x + e y + f); a point outside the
    input reads `fill` [C], a point inside is interpolated between its clamped neighbours."""
    a, b, c, d, e, f = (matrix[i] for i in range(6))
    height, width, channels = img.shape
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5,
                          jnp.arange(width, dtype=jnp.float32) + 0.5, indexing="ij")
    src_x = a * xs + b * ys + c
    src_y = d * xs + e * ys + f
    outside = (src_x < 0) | (src_x >= width) | (src_y < 0) | (src_y >= height)
    x0, y0 = jnp.floor(src_x - 0.5), jnp.floor(src_y - 0.5)
    fx, fy = src_x - 0.5 - x0, src_y - 0.5 - y0
    out = 0.0
    for oy, wy in ((0, 1.0 - fy), (1, fy)):
        for ox, wx in ((0, 1.0 - fx), (1, fx)):
            yy = jnp.clip(y0 + oy, 0, height - 1).astype(jnp.int32)
            xx = jnp.clip(x0 + ox, 0, width - 1).astype(jnp.int32)
            out = out + (wy * wx)[..., None] * img[yy, xx]
    fill = jnp.broadcast_to(jnp.asarray(fill, jnp.float32), (channels,))
    return _quantize(jnp.where(outside[..., None], fill, out))


def rotate_matrix(degrees, height: int, width: int):
    """PIL `Image.rotate(degrees)` about the image centre (counter-clockwise for positive degrees)."""
    angle = -jnp.deg2rad(degrees)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return jnp.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy])


def _affine(kind: str):
    def op(img, arg, fill=IMAGENET_MEAN_255):
        height, width = img.shape[0], img.shape[1]
        one, zero = jnp.float32(1.0), jnp.float32(0.0)
        arg = jnp.asarray(arg, jnp.float32)
        matrix = {
            "rotate": lambda: rotate_matrix(arg, height, width),
            "shear_x": lambda: jnp.stack([one, arg, zero, zero, one, zero]),
            "shear_y": lambda: jnp.stack([one, zero, zero, arg, one, zero]),
            "translate_x": lambda: jnp.stack([one, zero, arg * width, zero, one, zero]),
            "translate_y": lambda: jnp.stack([one, zero, zero, zero, one, arg * height]),
        }[kind]()
        return affine_warp(img, matrix, fill)
    op.__name__ = f"op_{kind}"
    return op


op_rotate, op_shear_x, op_shear_y = _affine("rotate"), _affine("shear_x"), _affine("shear_y")
op_translate_x, op_translate_y = _affine("translate_x"), _affine("translate_y")


def _signed(value, negate):
    return jnp.where(negate, -value, value)


# name -> (op, level_to_arg(level in [0, 10], negate) -> argument), timm's `_RAND_INCREASING_TRANSFORMS`
# with `auto_augment.py`'s level maps (_LEVEL_DENOM = 10, translate_pct 0.45).
RAND_AUGMENT_OPS = {
    "AutoContrast": (op_auto_contrast, lambda level, neg: 0.0),
    "Equalize": (op_equalize, lambda level, neg: 0.0),
    "Invert": (op_invert, lambda level, neg: 0.0),
    "Rotate": (op_rotate, lambda level, neg: _signed(level / 10 * 30.0, neg)),
    "PosterizeIncreasing": (op_posterize, lambda level, neg: 4.0 - jnp.floor(level / 10 * 4)),
    "SolarizeIncreasing": (op_solarize, lambda level, neg: 256.0 - jnp.floor(level / 10 * 256)),
    "SolarizeAdd": (op_solarize_add, lambda level, neg: jnp.floor(level / 10 * 110)),
    "ColorIncreasing": (op_color, lambda level, neg: 1.0 + _signed(level / 10 * 0.9, neg)),
    "ContrastIncreasing": (op_contrast, lambda level, neg: 1.0 + _signed(level / 10 * 0.9, neg)),
    "BrightnessIncreasing": (op_brightness, lambda level, neg: 1.0 + _signed(level / 10 * 0.9, neg)),
    "SharpnessIncreasing": (op_sharpness, lambda level, neg: 1.0 + _signed(level / 10 * 0.9, neg)),
    "ShearX": (op_shear_x, lambda level, neg: _signed(level / 10 * 0.3, neg)),
    "ShearY": (op_shear_y, lambda level, neg: _signed(level / 10 * 0.3, neg)),
    "TranslateXRel": (op_translate_x, lambda level, neg: _signed(level / 10 * 0.45, neg)),
    "TranslateYRel": (op_translate_y, lambda level, neg: _signed(level / 10 * 0.45, neg)),
}
RAND_INCREASING = tuple(RAND_AUGMENT_OPS)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _rand_augment_image(key, img, ops, num_ops, magnitude, magnitude_std, prob, fill):
    branches = []
    for name in ops:
        op, level_to_arg = RAND_AUGMENT_OPS[name]

        def branch(image, level, negate, op=op, level_to_arg=level_to_arg, geometric=name in GEOMETRIC):
            arg = level_to_arg(level, negate)
            return op(image, arg, fill) if geometric else op(image, arg)
        branches.append(branch)
    for k in jax.random.split(key, num_ops):
        k_op, k_apply, k_level, k_sign = jax.random.split(k, 4)
        index = jax.random.randint(k_op, (), 0, len(ops))
        if magnitude_std == float("inf"):
            level = jax.random.uniform(k_level, (), maxval=magnitude)
        elif magnitude_std > 0:
            level = magnitude + magnitude_std * jax.random.normal(k_level)
        else:
            level = jnp.float32(magnitude)
        level = jnp.clip(level, 0.0, 10.0)
        negate = jax.random.uniform(k_sign) > 0.5
        applied = jax.lax.switch(index, branches, img, level, negate)
        img = jnp.where(jax.random.uniform(k_apply) <= prob, applied, img)
    return img


def rand_augment(key: jax.Array, images: jax.Array, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, prob: float = 0.5, max_value: float = 255.0,
                 ops: Sequence[str] = RAND_INCREASING, fill=IMAGENET_MEAN_255) -> jax.Array:
    """timm RandAugment (default `rand-m9-mstd0.5-inc1`) per image of [B, H, W, C] (C = 3 or 1), values in
    [0, max_value]; float32 out, same range. `ops` may name any subset of `RAND_AUGMENT_OPS`; `fill` is the
    0..255 colour that geometric ops bring in. Under vmap, `lax.switch` evaluates every op and selects."""
    unknown = sorted(set(ops) - set(RAND_AUGMENT_OPS))
    if unknown:
        raise ValueError(f"unknown RandAugment ops {unknown}; known: {list(RAND_AUGMENT_OPS)}")
    x = _as_float(images) * (255.0 / max_value)
    keys = _batch_keys(key, images.shape[0])
    out = jax.vmap(lambda k, img: _rand_augment_image(k, img, tuple(ops), num_ops, magnitude, magnitude_std,
                                                      prob, fill))(keys, x)
    return out * (max_value / 255.0)


# ------------------------------------------------------------------------------------------------ erasing


def erase_box_from_uniforms(u: jax.Array, height: int, width: int, min_area: float = 0.02,
                            max_area: float = 1 / 3, min_aspect: float = 0.3,
                            max_aspect: float | None = None) -> tuple[jax.Array, jax.Array]:
    """timm RandomErasing's box from uniforms `u` [10, 4] (area, log-aspect, top, left per attempt):
    ((top, left, h, w) int32, found). The first attempt with w < W and h < H wins."""
    max_aspect = max_aspect or 1.0 / min_aspect
    log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
    target = (min_area + (max_area - min_area) * u[:, 0]) * (height * width)
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    valid = (w < width) & (h < height)
    top = jnp.minimum((u[:, 2] * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum((u[:, 3] * (width - w + 1)).astype(jnp.int32), width - w)
    first = jnp.argmax(valid)
    return jnp.stack([top[first], left[first], h[first], w[first]]), valid[first]


def random_erasing(key: jax.Array, images: jax.Array, prob: float = 0.25, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: float | None = None,
                   mode: str = "pixel") -> jax.Array:
    """timm RandomErasing per batch element of [B, H, W, C] (or clips, one box for all frames): with
    probability `prob`, one box is replaced by N(0, 1) noise per pixel ('pixel'), per channel ('rand')
    or zeros ('const'). Float32 out."""
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"mode={mode!r}; expected 'pixel', 'rand' or 'const'")
    height, width, channels = images.shape[-3:]
    x = _as_float(images)

    def one(k, img):
        k_apply, k_box, k_noise = jax.random.split(k, 3)
        box, found = erase_box_from_uniforms(jax.random.uniform(k_box, (CROP_ATTEMPTS, 4)), height, width,
                                             min_area, max_area, min_aspect, max_aspect)
        rows = jnp.arange(height)[:, None]
        cols = jnp.arange(width)[None, :]
        in_box = (rows >= box[0]) & (rows < box[0] + box[2]) & (cols >= box[1]) & (cols < box[1] + box[3])
        erase = in_box & found & (jax.random.uniform(k_apply) < prob)
        if mode == "pixel":
            noise = jax.random.normal(k_noise, img.shape, img.dtype)
        elif mode == "rand":
            noise = jnp.broadcast_to(jax.random.normal(k_noise, (channels,), img.dtype), img.shape)
        else:
            noise = jnp.zeros_like(img)
        return jnp.where(erase[:, :, None], noise, img)

    return jax.vmap(one)(_batch_keys(key, images.shape[0]), x)


# ------------------------------------------------------------------------------------------------ MMA-DFER


def mma_dfer_train_clips(key: jax.Array, clips: jax.Array, size: int = 224, brightness: float = 0.5,
                         sampler: str = "mma_dfer") -> jax.Array:
    """The reference's train transform of uint8 clips [B, T, H, W, 3]: ColorJitter(brightness) ->
    GroupRandomSizedCrop(size) -> GroupRandomHorizontalFlip -> ToTorchFormatTensor (/255, no mean/std);
    float32 [B, T, size, size, 3] in [0, 1]."""
    k_bright, k_crop, k_flip = jax.random.split(key, 3)
    x = brightness_jitter(k_bright, clips, brightness, max_value=255.0)
    x = random_resized_crop(k_crop, x, size, sampler=sampler)
    x = random_flip(k_flip, x)
    return x / 255.0


def mma_dfer_eval_clips(clips: jax.Array, size: int = 224) -> jax.Array:
    """The reference's test transform: GroupResize(size) (identity at 224 px) -> /255."""
    if clips.shape[-3:-1] == (size, size):
        return _as_float(clips) / 255.0
    return resize(clips, size) / 255.0
