"""UniEmoX (Chen, Sun, Liu, IEEE TIP 2025): CLIP-guided masked-image pretraining on a scene and a person view.

Per image, the student (an `MAE`) sees a masked scene view (a random resized crop) and a masked person view
(the crop of the person box, or a second crop of the whole image where there is none). Each view's encoder
CLS, projected to the CLIP width by the student's `decoder_embed` (UniEmoX's `mid_feature`), is a 512-d
vector: alpha (scene) and beta (person). The fusion (UniEmoX's `AttentionFusion`, "easyfusion") is

    gamma = ELU(Linear(LN(alpha) + LN(beta)))          one LayerNorm shared by both inputs

and the objective (`pretraining_losses`) is the weighted sum of
    reconstruction   the MAE loss of the scene view (the person view runs the encoder only: the reference
                     computes its reconstruction and discards it)
    similarity       1 - mean_i cos(gamma_i, c_i), c = the frozen CLIP image embedding of the same scene crop
    contrastive      1 - mean_i cos(P_i, Q_i), P = s * gamma_hat T^T and Q = s * c_hat T^T: the student's and
                     CLIP's image-to-text similarity rows over the batch's prompt embeddings T (s = CLIP's
                     logit scale; it cancels in the cosine but is kept for the logged rows)
with unit weights by default. `fusion="none"` distils alpha alone (the reference's ablation without the fusion
component). The CLIP teacher and the cached prompt embeddings enter through `pretraining_losses`, so the
model holds only what trains.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxemo import layers
from jaxemo.models import clip, mae

FUSIONS = ("easyfusion", "none")


class Fusion(nn.Module):
    """`ELU(Linear(LN(scene) + LN(person)))` with one LayerNorm for both inputs (torch's eps 1e-5)."""

    width: int = 512
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, scene: jax.Array, person: jax.Array) -> jax.Array:
        norm = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False, dtype=self.dtype, name="norm",
                            scale_init=layers.with_axes(nn.initializers.ones, "mlp"),
                            bias_init=layers.with_axes(nn.initializers.zeros, "mlp"))
        x = norm(scene) + norm(person)
        x = nn.Dense(self.width, dtype=self.dtype, name="proj",
                     kernel_init=layers.with_axes(nn.initializers.xavier_uniform(), "mlp", "embed"),
                     bias_init=layers.with_axes(nn.initializers.zeros, "embed"))(x)
        return nn.elu(x)


class UniEmoX(nn.Module):
    """`__call__(scene, person)` -> `(reconstruction loss, aux)`; aux: `fused` (gamma), `scene_feature`
    (alpha), `person_feature` (beta), the scene view's `mask` and `pred`."""

    student: mae.MAE
    fusion: str = "easyfusion"
    dtype: Any = jnp.float32

    def setup(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}: expected one of {FUSIONS}")
        if self.fusion == "easyfusion":
            self.fuse = Fusion(self.student.decoder_width, dtype=self.dtype)

    def __call__(self, scene, person, deterministic: bool = True, scene_noise: Optional[jax.Array] = None,
                 person_noise: Optional[jax.Array] = None):
        if scene.shape != person.shape:
            raise ValueError(f"the scene and person views must have one shape, got {scene.shape} and {person.shape}")
        reconstruction, scene_aux = self.student(scene, deterministic, noise=scene_noise)
        if person_noise is None:
            person_noise = jax.random.uniform(self.make_rng("masking"), (person.shape[0], self.student.num_patches))
        latent, _, _, _ = self.student.encode(person, person_noise, deterministic)
        alpha = scene_aux["projected_cls"]
        beta = self.student.decoder_embed(latent[:, 0])
        fused = self.fuse(alpha, beta) if self.fusion == "easyfusion" else alpha
        return reconstruction, {"fused": fused, "scene_feature": alpha, "person_feature": beta,
                                "mask": scene_aux["mask"], "pred": scene_aux["pred"]}


class Pretrainer(nn.Module):
    """The student (`UniEmoX`) and the teacher's image tower in one module, so the trainer sees one parameter
    tree: `uniemox/...` trains, `teacher/...` (`visual`, `visual_projection`, `logit_scale` of a `clip.CLIP`)
    is frozen by the task and may be stored and run in bf16. `__call__(scene, person, teacher_scene)` returns
    the student's `(reconstruction, aux)` with `clip_image` (the teacher's embedding of `teacher_scene`, the
    same crop normalised for CLIP) and `logit_scale` added, both without gradient."""

    uniemox: UniEmoX
    teacher: clip.CLIP

    def __call__(self, scene, person, teacher_scene, deterministic: bool = True):
        reconstruction, aux = self.uniemox(scene, person, deterministic)
        clip_image = self.teacher.encode_image(teacher_scene.astype(self.teacher.dtype))
        teacher = {"clip_image": clip_image.astype(jnp.float32), "logit_scale": self.teacher.logit_scale}
        return reconstruction, {**aux, **jax.lax.stop_gradient(teacher)}


def create(variant: Optional[str] = None, **fields) -> UniEmoX:
    """UniEmoX with `fields`; without a `student` one, its student is the MAE of the ViT variant `variant`
    ("B/16", the paper's, when None) in UniEmoX's dtype."""
    if "student" not in fields:
        fields["student"] = mae.create(variant, dtype=fields.get("dtype", jnp.float32))
    elif variant is not None:
        raise ValueError(f"variant={variant!r} names a student, and a student is given: pass one of them")
    return UniEmoX(**fields)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    reconstruction: float = 1.0
    similarity: float = 1.0
    contrastive: float = 1.0


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps


def pretraining_losses(reconstruction, fused, clip_image, text_embeds, logit_scale,
                       weights: LossWeights = LossWeights(), valid: Optional[jax.Array] = None) -> dict:
    """UniEmoX's three terms and their weighted sum (`total`). `clip_image` `[B, E]`: the teacher's image
    embeddings of the scene crops; `text_embeds` `[B, E]`: the batch's prompt embeddings (cached);
    `logit_scale`: CLIP's stored log scale. The teacher's inputs get no gradient. `valid` `[B]` (1 = a real
    row) leaves padding rows out of both means and out of the prompts the rows are compared over."""
    clip_image, text_embeds = jax.lax.stop_gradient((clip_image, text_embeds))
    scale = jnp.exp(jax.lax.stop_gradient(logit_scale)).astype(jnp.float32)
    valid = jnp.ones(fused.shape[:1], jnp.float32) if valid is None else valid.astype(jnp.float32)
    mean = lambda x: (x * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    student, teacher, text = _unit(fused), _unit(clip_image), _unit(text_embeds) * valid[:, None]
    similarity = 1.0 - mean(jnp.sum(student * teacher, axis=-1))
    student_rows = scale * student @ text.T
    teacher_rows = scale * teacher @ text.T
    contrastive = 1.0 - mean(jnp.sum(_unit(student_rows) * _unit(teacher_rows), axis=-1))
    total = (weights.reconstruction * reconstruction + weights.similarity * similarity
             + weights.contrastive * contrastive)
    return {"total": total, "reconstruction": reconstruction, "similarity": similarity, "contrastive": contrastive}
