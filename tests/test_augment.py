"""On-device augmentation: PIL parity of every op, torchvision / MMA-DFER / timm sampling logic from fixed
uniforms, shapes, ranges, determinism, shared crops over a clip's frames, mixup/cutmix targets."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from jaxemo.data import augment as A

FILL = A.IMAGENET_MEAN_255
# Compilation dominates these tests: each helper below is compiled once for the whole file (same shapes,
# every hyper-parameter that is only arithmetic passed positionally, so traced).
MIX_SHAPE = (4, 2, 16, 16, 3)
_MIX = jax.jit(lambda key, x, labels, *hyper: A.mixup_cutmix(key, x, labels, 5, *hyper))
_ERASE = jax.jit(lambda key, x, prob: A.random_erasing(key, x, prob))
_RAND_AUGMENT = jax.jit(lambda key, x, prob, max_value: A.rand_augment(key, x, prob=prob, max_value=max_value))
CROP = jax.jit(A.random_resized_crop, static_argnums=2)


def MIX(key, x, labels, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1):
    return _MIX(key, x, labels, mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing)


def ERASE(key, x, prob):
    return _ERASE(key, x, prob)


def RAND_AUGMENT(key, x, prob=0.5, max_value=255.0):
    return _RAND_AUGMENT(key, x, prob, max_value)


def _image(height=40, width=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 5 + yy * 2) % 256, (yy * 6) % 256, 128 + 60 * np.sin(xx / 5.0)], -1)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def _max_diff(ours, reference):
    return float(np.abs(np.asarray(ours, np.float32) - np.asarray(reference, np.float32)).max())


# ------------------------------------------------------------------------------------------------ PIL parity


def test_rand_augment_ops_match_pil_within_rounding():
    img = _image()
    pil = Image.fromarray(img)
    height, width = img.shape[:2]
    affine = lambda data: pil.transform(pil.size, Image.AFFINE, data, Image.BILINEAR, fillcolor=FILL)
    factors = (0.1, 1.7)

    @jax.jit
    def ours(x):
        out = [A.op_auto_contrast(x), A.op_equalize(x), A.op_invert(x), A.op_posterize(x, 2.0),
               A.op_solarize(x, 26.0), A.op_solarize_add(x, 99.0), A.op_rotate(x, 27.0, FILL),
               A.op_shear_x(x, -0.2, FILL), A.op_shear_y(x, 0.27, FILL), A.op_translate_x(x, 0.4, FILL),
               A.op_translate_y(x, -0.31, FILL), A.op_posterize(x, 0.0)]
        for f in factors:
            out += [A.op_color(x, f), A.op_contrast(x, f), A.op_brightness(x, f), A.op_sharpness(x, f)]
        return out

    reference = [
        ImageOps.autocontrast(pil), ImageOps.equalize(pil), ImageOps.invert(pil), ImageOps.posterize(pil, 2),
        ImageOps.solarize(pil, 26), pil.point([min(255, i + 99) if i < 128 else i for i in range(256)] * 3),
        pil.rotate(27.0, resample=Image.BILINEAR, fillcolor=FILL), affine((1, -0.2, 0, 0, 1, 0)),
        affine((1, 0, 0, 0.27, 1, 0)), affine((1, 0, 0.4 * width, 0, 1, 0)),
        affine((1, 0, 0, 0, 1, -0.31 * height)),
        np.zeros_like(img),  # posterize to 0 bits (timm at magnitude 10; old PIL; Pillow >= 11 refuses)
    ]
    for f in factors:
        reference += [ImageEnhance.Color(pil).enhance(f), ImageEnhance.Contrast(pil).enhance(f),
                      ImageEnhance.Brightness(pil).enhance(f), ImageEnhance.Sharpness(pil).enhance(f)]
    for i, (got, want) in enumerate(zip(ours(jnp.asarray(img, jnp.float32)), reference, strict=True)):
        assert _max_diff(got, want) <= 1.0, i


@pytest.mark.parametrize("crop,out", [((3, 5, 20, 30), (64, 64)), ((0, 0, 40, 48), (16, 20)),
                                      ((7, 2, 31, 17), (24, 24))])
def test_crop_and_resize_matches_pil_bilinear(crop, out):
    img = _image()
    top, left, h, w = crop
    reference = Image.fromarray(img).crop((left, top, left + w, top + h)).resize(out[::-1], Image.BILINEAR)
    got = jax.jit(A.crop_and_resize, static_argnums=2)(jnp.asarray(img), jnp.array(crop), out)
    assert _max_diff(got, reference) <= 1.0


def test_resize_is_identity_at_the_same_size():
    img = _image()
    np.testing.assert_allclose(jax.jit(A.resize, static_argnums=1)(jnp.asarray(img), (40, 48)), img, atol=1e-3)


# ------------------------------------------------------------------------------------------------ crop sampling


def _torchvision_get_params(u, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params with its random draws replaced by the uniforms u[k]."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for k in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[k, 0])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[k, 1])
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(u[k, 2] * (height - h + 1)), int(u[k, 3] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _mma_dfer_crop(u, height, width, scale, ratio):
    """The reference's GroupRandomSizedCrop with its random draws replaced by the uniforms u[k]."""
    for k in range(10):
        target_area = (scale[0] + (scale[1] - scale[0]) * u[k, 0]) * height * width
        aspect_ratio = ratio[0] + (ratio[1] - ratio[0]) * u[k, 1]
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if u[k, 4] < 0.5:
            w, h = h, w
        if w <= width and h <= height:
            return int(u[k, 2] * (height - h + 1)), int(u[k, 3] * (width - w + 1)), h, w
    side = min(height, width)  # fallback: resize shorter side + random crop = a random square
    offset = int(u[0, 2] * (max(height, width) - side + 1))
    return (offset if height > width else 0), (offset if width > height else 0), side, side


@pytest.mark.parametrize("sampler,reference", [("torchvision", _torchvision_get_params),
                                               ("mma_dfer", _mma_dfer_crop)])
@pytest.mark.parametrize("height,width,scale", [(224, 224, (0.08, 1.0)), (60, 200, (0.08, 1.0)),
                                                (200, 40, (0.9, 1.0)), (30, 31, (0.95, 1.0))])
def test_crop_sampler_follows_the_reference_algorithm(sampler, reference, height, width, scale):
    ratio = (3 / 4, 4 / 3)
    u = np.asarray(jax.random.uniform(jax.random.key(height + width), (400, 10, 5)))
    ours = np.asarray(jax.vmap(lambda v: A.crop_from_uniforms(v, height, width, scale, ratio, sampler))(u))
    expected = np.array([reference(v.astype(np.float64), height, width, scale, ratio) for v in u])
    mismatched = np.flatnonzero((ours != expected).any(axis=1))
    assert len(mismatched) <= 2, (ours[mismatched[:3]], expected[mismatched[:3]])  # float32 rounding ties
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert (h > 0).all() and (w > 0).all()


def test_crop_fallbacks():
    never = np.zeros((10, 5), np.float32)  # area fraction 1 at the widest ratio never fits a wide image
    never[:, 0], never[:, 1] = 0.999, 0.999
    assert A.crop_from_uniforms(never, 20, 200, (0.99, 1.0)).tolist() == [0, 86, 20, 27]  # centre, ratio 4/3
    never[:, 4], never[0, 2] = 1.0, 0.5  # no swap; random square
    assert A.crop_from_uniforms(never, 20, 200, (0.99, 1.0), sampler="mma_dfer").tolist() == [0, 90, 20, 20]


# ------------------------------------------------------------------------------------------------ clip-level ops


def test_random_resized_crop_shapes_and_one_crop_per_clip():
    base = jax.random.uniform(jax.random.key(0), (3, 1, 32, 40, 3), maxval=255.0)
    clips = base * jnp.arange(1, 5, dtype=jnp.float32)[None, :, None, None, None] / 4  # frame t = base*(t+1)/4
    out = CROP(jax.random.key(1), clips, 24)
    assert out.shape == (3, 4, 24, 24, 3) and out.dtype == jnp.float32
    # the crop+resize is linear, so frames scale like their inputs only if every frame got the same crop
    np.testing.assert_allclose(out * 4 / jnp.arange(1, 5)[None, :, None, None, None],
                               jnp.broadcast_to(out[:, :1] * 4, out.shape), rtol=1e-4, atol=1e-3)
    images = CROP(jax.random.key(1), jnp.zeros((5, 32, 40, 3), jnp.uint8), (16, 20))
    assert images.shape == (5, 16, 20, 3)


def test_flip_is_an_involution_and_flips_about_half():
    x = jax.random.uniform(jax.random.key(0), (64, 2, 8, 8, 3))
    key = jax.random.key(3)
    once = A.random_flip(key, x)
    np.testing.assert_array_equal(A.random_flip(key, once), x)
    flipped = np.array([bool(jnp.array_equal(once[i], x[i, :, :, ::-1])) for i in range(64)])
    kept = np.array([bool(jnp.array_equal(once[i], x[i])) for i in range(64)])
    assert (flipped ^ kept).all() and 16 < flipped.sum() < 48


def test_brightness_one_factor_per_clip_within_bounds():
    x = jax.random.uniform(jax.random.key(0), (32, 3, 8, 8, 3), minval=0.05, maxval=0.6)
    out = A.brightness_jitter(jax.random.key(1), x, 0.5, max_value=1.0)
    factors = out / x
    np.testing.assert_allclose(factors, jnp.broadcast_to(factors[:, :1, :1, :1, :1], factors.shape), rtol=1e-5)
    assert float(factors.min()) >= 0.5 - 1e-6 and float(factors.max()) <= 1.5 + 1e-6
    out255 = A.brightness_jitter(jax.random.key(1), jnp.full((64, 4, 4, 3), 200, jnp.uint8), 0.5, max_value=255.0)
    assert float(out255.max()) == 255.0 and float(out255.min()) >= 100.0


def test_determinism_given_the_key():
    x = jax.random.uniform(jax.random.key(0), MIX_SHAPE, maxval=255.0)
    clips = jax.random.uniform(jax.random.key(0), (3, 4, 32, 40, 3), maxval=255.0)
    images = jax.random.uniform(jax.random.key(0), (64, 32, 32, 3))
    functions = [lambda k: CROP(k, clips, 24), jax.jit(lambda k: A.random_flip(k, x)),
                 jax.jit(lambda k: A.brightness_jitter(k, x, 0.4, 255.0)),
                 lambda k: ERASE(k, images, 1.0), lambda k: RAND_AUGMENT(k, x[:, 0], 1.0),
                 lambda k: MIX(k, x, jnp.arange(4))[0]]
    for i, f in enumerate(functions):
        np.testing.assert_array_equal(f(jax.random.key(7)), f(jax.random.key(7)))
        assert not np.array_equal(f(jax.random.key(7)), f(jax.random.key(8))), i


# ------------------------------------------------------------------------------------------------ mixup


def test_mixup_mixes_images_and_targets_with_one_lambda():
    x = jax.random.uniform(jax.random.key(0), MIX_SHAPE)
    labels = jnp.array([0, 1, 2, 0])
    out, targets, lam = MIX(jax.random.key(1), x, labels, mixup_alpha=0.8, cutmix_alpha=0.0,
                            label_smoothing=0.1)
    assert 0.0 < float(lam) < 1.0
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-6)
    y = np.full((4, 5), 0.1 / 5) + np.eye(5)[np.asarray(labels)] * 0.9
    np.testing.assert_allclose(targets, lam * y + (1 - lam) * y[::-1], rtol=1e-5)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_pastes_one_box_and_lambda_is_its_complement_area():
    x = jnp.broadcast_to(jnp.arange(4, dtype=jnp.float32)[:, None, None, None, None], MIX_SHAPE)
    labels = jnp.arange(4)
    for seed in range(5):
        out, targets, lam = MIX(jax.random.key(seed), x, labels, mixup_alpha=0.0,
                                cutmix_alpha=1.0, label_smoothing=0.0)
        from_partner = np.asarray(out[0, 0, :, :, 0] == 3.0)  # element 0's partner is element 3
        assert (np.asarray(out[0, 0, :, :, 0]) == 0.0)[~from_partner].all()
        np.testing.assert_array_equal(out[0, 1], out[0, 0])  # one box for every frame
        rows, cols = np.flatnonzero(from_partner.any(1)), np.flatnonzero(from_partner.any(0))
        if len(rows):
            assert from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
        np.testing.assert_allclose(float(lam), 1.0 - from_partner.mean(), atol=1e-6)
        np.testing.assert_allclose(targets[0], [lam, 0, 0, 1 - lam, 0], atol=1e-6)


def test_mixup_off_keeps_images_and_smooths_labels():
    x = jax.random.uniform(jax.random.key(0), MIX_SHAPE)
    out, targets, lam = MIX(jax.random.key(1), x, jnp.arange(4), prob=0.0, label_smoothing=0.1)
    assert float(lam) == 1.0
    np.testing.assert_array_equal(out, x)
    np.testing.assert_allclose(targets, np.full((4, 5), 0.02) + 0.9 * np.eye(5)[:4], rtol=1e-6)
    with pytest.raises(ValueError, match="even"):
        A.mixup_cutmix(jax.random.key(1), x[:3], jnp.arange(3), 5)


def test_mixup_switch_picks_both_modes():
    x = jax.random.uniform(jax.random.key(0), MIX_SHAPE)
    modes = set()
    for seed in range(12):
        out, _, lam = MIX(jax.random.key(seed), x, jnp.arange(4))
        is_mixup = np.allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-6)
        modes.add("mixup" if is_mixup else "cutmix")
    assert modes == {"mixup", "cutmix"}


# ------------------------------------------------------------------------------------------------ RandAugment


def test_rand_augment_shapes_range_and_probability():
    img = jnp.asarray(np.stack([_image(16, 16, s) for s in range(4)]), jnp.float32)  # as the determinism test
    out = RAND_AUGMENT(jax.random.key(0), img)
    assert out.shape == img.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255 and np.array_equal(out, np.round(out))
    assert not np.array_equal(out, img)
    np.testing.assert_array_equal(RAND_AUGMENT(jax.random.key(0), img, 0.0), img)
    unit = RAND_AUGMENT(jax.random.key(0), img / 255.0, 0.5, 1.0)
    np.testing.assert_allclose(unit * 255.0, out, atol=1e-3)
    invert = jax.jit(lambda k, x: A.rand_augment(k, x, ops=["Invert"], num_ops=1, prob=1.0))
    inverted = invert(jax.random.key(0), img)
    np.testing.assert_array_equal(inverted, 255.0 - img)
    with pytest.raises(ValueError, match="unknown"):
        A.rand_augment(jax.random.key(0), img, ops=["Cutout"])


# ------------------------------------------------------------------------------------------------ erasing


def _timm_erase_box(u, height, width, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """timm RandomErasing's box (count 1) with its random draws replaced by the uniforms u[k]."""
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for k in range(10):
        target_area = (min_area + (max_area - min_area) * u[k, 0]) * height * width
        aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[k, 1])
        h = round(math.sqrt(target_area * aspect))
        w = round(math.sqrt(target_area / aspect))
        if w < width and h < height:
            return (int(u[k, 2] * (height - h + 1)), int(u[k, 3] * (width - w + 1)), h, w), True
    return None, False


def test_erase_box_follows_timm():
    u = np.asarray(jax.random.uniform(jax.random.key(0), (300, 10, 4)))
    for height, width in ((32, 32), (8, 64)):
        boxes, found = jax.vmap(functools.partial(A.erase_box_from_uniforms, height=height, width=width))(u)
        mismatched = 0
        for v, box, ok in zip(u, np.asarray(boxes), np.asarray(found)):
            expected, expected_ok = _timm_erase_box(v.astype(np.float64), height, width)
            mismatched += (bool(ok) != expected_ok) or (expected_ok and tuple(box) != expected)
        assert mismatched <= 2


def test_random_erasing_area_within_bounds():
    x = jnp.full((64, 32, 32, 3), 5.0)
    out = ERASE(jax.random.key(0), x, 1.0)
    erased = np.asarray((out != 5.0).any(axis=-1))
    area = erased.reshape(64, -1).sum(axis=1)
    slack = 32 + 1  # rounding h and w each by up to half a pixel
    assert (area >= 0.02 * 1024 - slack).all() and (area <= 1024 / 3 + slack).all()
    assert (area > 0).mean() > 0.9  # a box is found in almost every image of this size
    for mask in erased[:8]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    noise = np.asarray(out)[erased]
    assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1  # 'pixel' mode: N(0, 1)
    np.testing.assert_array_equal(ERASE(jax.random.key(0), x, 0.0), x)
    rate = (np.asarray((ERASE(jax.random.key(1), x, 0.25) != 5.0).any(axis=(1, 2, 3)))).mean()
    assert 0.05 < rate < 0.5


# ------------------------------------------------------------------------------------------------ MMA-DFER


def test_mma_dfer_clip_transforms():
    clips = jax.random.randint(jax.random.key(0), (2, 4, 32, 32, 3), 0, 256).astype(jnp.uint8)
    out = jax.jit(lambda k, x: A.mma_dfer_train_clips(k, x, size=24))(jax.random.key(1), clips)
    assert out.shape == (2, 4, 24, 24, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_allclose(A.mma_dfer_eval_clips(clips, 32), clips / 255.0)
    assert A.mma_dfer_eval_clips(clips, 16).shape == (2, 4, 16, 16, 3)
