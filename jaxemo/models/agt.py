"""MER2024 fusion models: the MERTools "attention" baseline and the Audio-Guided Transformer (AGT).

Inputs are MERTools' features, one per selected feature name (`modalities`, in order): an utterance-level
vector [B, D] or a frame-level sequence [B, T, D] padded at the end, with a mask [B, T] (True = a real frame;
`lengths_to_mask`). Utterance vs frame level is read from each input's rank, so one model serves either
MER2024 builder config (`utt`, `top1`, `fra`) and the synthetic MER data. Both models return
`(logits [B, num_classes], aux)`; `aux` holds the fused feature and the fusion weights.

MERToolsAttention (zeroQiaoba/MERTools `MER2024/toolkit/models/attention.py`, `modules/encoder.py`, read
for this file): per feature an MLPEncoder (Dropout(x) -> ReLU(Linear D->h) -> ReLU(Linear h->h) ->
ReLU(Linear h->h)); for a frame-level input MERTools' LSTMEncoder instead (one LSTM layer D->h, its final
hidden state, Dropout, Linear h->h with no activation). Fusion: concat [n h] -> MLPEncoder(n h -> h) ->
Linear(h -> n) gives raw weights, used WITHOUT a softmax: fused = stack(hidden, -1) @ w [h] -> Linear(h ->
6). n = 3 is the reference; any number of features works (as its `attention_topn`). Parameter names follow
the reference (`linear_1..3`, `attention_mlp`, `fc_att`, `fc_out_1`), with `encoder_<feature>` for
`audio_encoder` etc.; the reference's valence head `fc_out_2` (Linear(h -> 0) for MER2024, whose
`output_dim2` is 0) is left out. Padding: MERTools zero-pads frame sequences *in front* and runs the LSTM
over the zeros (its final state is then the last real frame's, but the zeros have moved the state). Here the
LSTM is masked: padded steps leave the state unchanged, so padding changes nothing; `lstm_front_padding=True`
reproduces the reference (end-padded input is moved to the back and the LSTM runs over leading zeros).
Gates are in torch's order (i, f, g, o); the LSTM keeps torch's two biases (`bias_ih`, `bias_hh`, summed in
the forward pass), since two biases train differently from one under Adam and L2. `jaxemo.convert.mertools`
converts a MERTools state dict to these params and back.

Initialisers (torch's defaults where the reference is torch code):
  * MERToolsAttention: every Linear (`linear_1..3` of the encoders and `attention_mlp`, the frame encoders'
    `linear_1`, `fc_att`, `fc_out_1`) as torch's nn.Linear: kernel and bias both U(+-1/sqrt(fan_in));
    the LSTM as torch's nn.LSTM: `input_kernel`, `recurrent_kernel`, `bias_ih`, `bias_hh` all U(+-1/sqrt(h)).
  * AudioGuidedTransformer: the input projections `proj_*` and the `head`: kernel U(+-1/sqrt(fan_in)) (torch's
    kernel default), bias zero; attention projections (self and cross): xavier-uniform kernel, zero bias;
    FFNs (`layers.Mlp`): xavier-uniform kernel, N(0, 1e-6) bias; LayerNorms: scale 1, bias 0; the `gate`
    Linear: zero kernel and bias (equal gates at init).

AudioGuidedTransformer. Known (the paper's abstract; ../shared/research/casp_agt.md B.1-B.2): HuBERT-large
audio features "guide" CLIP-large video and Baichuan-13B text features through a "Context-Based Transformer"
and an "Adaptive Multimodal Fusion", fusing inter- and intra-channel information. Nothing else is public
(no body text, no code), so every part below is a choice, each behind a dataclass field:
  * input projection: Dropout(`input_dropout`) then Linear(D -> `width`) per feature; a frame sequence stays
    a sequence of tokens (+ sinusoidal positions, `frame_positions`), an utterance vector becomes
    `utt_tokens` tokens (one by default: the form MERTools' strongest features take). With one token per
    modality, attention over a modality is a projection of that token; `utt_tokens` > 1 gives it more.
  * intra-channel: `self_depth` pre-LN self-attention blocks per modality (jaxemo.layers.EncoderBlock,
    GELU FFN of `mlp_ratio` x width), padded frames masked out of the keys.
  * inter-channel (the context transformer): the guiding modality's tokens are the queries; per other
    modality a stack of `depth` pre-LN blocks: q + CrossAttn(LN q, LN ctx) then q + FFN(LN q). Branches are
    parallel (one per context modality, own weights), as MulT's cross-modal transformers, not chained.
  * `guide`: "audio" (default), "video"/"vision" or "text" (the ablation), or a feature name. A role is
    matched to a feature name by `roles` if given, else by the name (hubert/wav2vec/... = audio, clip/
    videomae/... = video, baichuan/bert/... = text).
  * adaptive gated fusion: each stream (the guide's own, then one per guided branch; with
    `fuse="all"` also the other modalities' own) is LayerNorm(masked mean over its tokens); a Linear on
    their concatenation gives one gate per stream, normalised by `gate` = "softmax" (a convex mixture) or
    "sigmoid" (independent gates); the gate Linear starts at zero (equal gates at init); fused =
    sum_s gate_s stream_s -> Dropout -> Linear(width -> 6).
Depth is small (1-2 in any plausible recipe), so layers are a Python loop, not `nn.scan`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers
from jaxemo.models.msa import sinusoidal_table

Dtype = Any
NUM_CLASSES = 6  # MERTools `emos_mer`: neutral, angry, happy, sad, worried, surprise
ROLE_KEYWORDS = {
    "audio": ("audio", "hubert", "wav2vec", "wavlm", "whisper", "data2vec", "emotion2vec", "vggish", "egemaps"),
    "video": ("video", "vision", "visual", "clip", "videomae", "manet", "resnet", "senet", "dinov2", "eva",
              "openface", "face"),
    "text": ("text", "baichuan", "bert", "llama", "bloom", "chatglm", "mistral", "qwen", "opt-", "electra",
             "xlnet", "moss", "deberta", "lert", "pert", "sentence", "t5"),
}


def lengths_to_mask(lengths, max_len: int) -> jax.Array:
    """[B] valid lengths -> [B, max_len] bool mask, True on the first `length` steps."""
    return jnp.arange(max_len) < jnp.asarray(lengths)[..., None]


def role_of(feature: str) -> Optional[str]:
    """The role a feature name suggests: the role of the longest keyword it contains ("chinese-hubert-large"
    is audio by "hubert", though it also contains the text keyword "bert"); None if none matches."""
    name = feature.lower()
    best = max(((len(k), role) for role, keys in ROLE_KEYWORDS.items() for k in keys if k in name), default=None)
    return best[1] if best else None


def resolve_guide(guide: str, modalities: Sequence[str], roles: Optional[Mapping[str, str]] = None) -> str:
    """The feature name that guides: `guide` itself if it is one, else the feature of that role."""
    modalities = tuple(modalities)
    if guide in modalities:
        return guide
    role = "video" if guide == "vision" else guide
    if role not in ROLE_KEYWORDS:
        raise ValueError(f"guide={guide!r}: expected one of {modalities} or a role {sorted(ROLE_KEYWORDS)}")
    if roles and role in roles:
        if roles[role] not in modalities:
            raise ValueError(f"roles[{role!r}]={roles[role]!r} is not one of the modalities {modalities}")
        return roles[role]
    found = [m for m in modalities if role_of(m) == role]
    if len(found) != 1:
        raise ValueError(f"guide={guide!r}: {len(found)} of the modalities {modalities} look like {role} "
                         f"({found}); name the feature, or give roles={{{role!r}: name}}")
    return found[0]


# torch nn.Linear's default kernel init: kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)).
TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def symmetric_uniform(bound: float):
    """An initializer drawing U(-bound, bound), as torch's `init.uniform_(-bound, bound)`."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _torch_linear(x, features: int, name: str, axes, dtype) -> jax.Array:
    """torch nn.Linear(x.shape[-1], features) applied to `x`, initialised as torch's default (kernel and bias
    U(+-1/sqrt(fan_in))): the MERTools baseline's layers, so that they start (and train) as the reference's."""
    bound = 1 / np.sqrt(x.shape[-1])
    return layers.dense(features, name, axes, dtype, kernel_init=TORCH_LINEAR_INIT,
                        bias_init=symmetric_uniform(bound))(x)


# The AGT's own Linears (input projections, head): torch's kernel init, a zero bias (a choice of ours).
_agt_linear = functools.partial(layers.dense, kernel_init=TORCH_LINEAR_INIT)


def _masked_mean(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    if mask is None:
        return x.mean(-2)
    weights = mask[..., None].astype(x.dtype)
    return (x * weights).sum(-2) / jnp.maximum(weights.sum(-2), 1.0)


# ---------------------------------------------------------------------------------------------------------
# MERTools baseline


class MLPEncoder(nn.Module):
    """MERTools' MLPEncoder: Dropout(x) -> ReLU(linear_1) -> ReLU(linear_2) -> ReLU(linear_3)."""

    hidden_dim: int
    dropout: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        x = nn.Dropout(self.dropout)(x.astype(self.dtype), deterministic)
        for i, in_axis in ((1, None), (2, "embed"), (3, "embed")):
            x = nn.relu(_torch_linear(x, self.hidden_dim, f"linear_{i}", (in_axis, "mlp"), self.dtype))
        return x


class LSTM(nn.Module):
    """One LSTM layer over [B, T, D] (torch gate order i, f, g, o); returns the final hidden state [B, h].

    Masked steps (mask False) leave (h, c) unchanged, so the result is the state after the last real frame.
    Params as torch's nn.LSTM (one layer, unidirectional), all U(+-1/sqrt(h)) at init: `input_kernel` [D, 4h]
    (weight_ih_l0 transposed), `recurrent_kernel` [h, 4h] (weight_hh_l0 transposed), `bias_ih` and `bias_hh`
    [4h] (bias_ih_l0, bias_hh_l0), the two biases summed in the forward pass.
    """

    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask: Optional[jax.Array] = None):
        h = self.hidden_dim
        init = symmetric_uniform(1 / np.sqrt(h))  # torch's nn.LSTM: every weight and bias U(+-1/sqrt(h))
        w_in = self.param("input_kernel", layers.with_axes(init, None, "mlp"), (x.shape[-1], 4 * h))
        w_rec = self.param("recurrent_kernel", layers.with_axes(init, "embed", "mlp"), (h, 4 * h))
        bias_ih = self.param("bias_ih", layers.with_axes(init, "mlp"), (4 * h,))
        bias_hh = self.param("bias_hh", layers.with_axes(init, "mlp"), (4 * h,))
        bias = (bias_ih + bias_hh).astype(self.dtype)
        gates_in = jnp.einsum("btd,dg->tbg", x.astype(self.dtype), w_in.astype(self.dtype)) + bias
        steps = jnp.ones(x.shape[:2], bool) if mask is None else mask
        carry = (jnp.zeros((x.shape[0], h), self.dtype),) * 2

        def step(carry, inputs):
            (h_prev, c_prev), (g_in, valid) = carry, inputs
            i, f, g, o = jnp.split(g_in + h_prev @ w_rec.astype(self.dtype), 4, axis=-1)
            c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c)
            keep = valid[:, None]
            return (jnp.where(keep, h_new, h_prev), jnp.where(keep, c, c_prev)), None

        (h_last, _), _ = jax.lax.scan(step, carry, (gates_in, steps.T))
        return h_last


def front_pad(x: jax.Array, mask: jax.Array) -> jax.Array:
    """End-padded [B, T, D] (mask [B, T]) -> the same frames moved to the end, zeros in front (MERTools)."""
    steps = x.shape[1]
    lengths = mask.sum(-1)
    source = jnp.arange(steps)[None, :] - (steps - lengths)[:, None]  # position t holds frame t - (T - len)
    moved = jnp.take_along_axis(x, jnp.clip(source, 0, steps - 1)[..., None], axis=1)
    return jnp.where((source >= 0)[..., None], moved, 0.0)


class LSTMEncoder(nn.Module):
    """MERTools' LSTMEncoder: LSTM(D -> h) final hidden state -> Dropout -> linear_1 (h -> h, no activation)."""

    hidden_dim: int
    dropout: float
    front_padding: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask: Optional[jax.Array], deterministic: bool):
        if self.front_padding and mask is not None:
            x, mask = front_pad(x, mask), None
        h = LSTM(self.hidden_dim, self.dtype, name="rnn")(x, mask)
        h = nn.Dropout(self.dropout)(h, deterministic)
        return _torch_linear(h, self.hidden_dim, "linear_1", ("embed", "mlp"), self.dtype)


class MERToolsAttention(nn.Module):
    """The MERTools MER2024 "attention" baseline over `modalities` (feature names, in fusion order)."""

    modalities: tuple
    hidden_dim: int = 128
    dropout: float = 0.3
    num_classes: int = NUM_CLASSES
    lstm_front_padding: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array], masks: Optional[Mapping[str, jax.Array]] = None,
                 deterministic: bool = True):
        _check_inputs(self.modalities, features)
        masks = masks or {}
        hidden = []
        for name in self.modalities:
            x = features[name]
            if x.ndim == 3:
                encoder = LSTMEncoder(self.hidden_dim, self.dropout, self.lstm_front_padding, self.dtype,
                                      name=f"encoder_{name}")
                hidden.append(encoder(x, masks.get(name), deterministic))
            else:
                hidden.append(MLPEncoder(self.hidden_dim, self.dropout, self.dtype, name=f"encoder_{name}")(
                    x, deterministic))
        attention = MLPEncoder(self.hidden_dim, self.dropout, self.dtype, name="attention_mlp")(
            jnp.concatenate(hidden, axis=-1), deterministic)
        weights = _torch_linear(attention, len(self.modalities), "fc_att", ("embed", None), self.dtype)  # raw
        fused = jnp.einsum("bhm,bm->bh", jnp.stack(hidden, axis=-1), weights)
        logits = _torch_linear(fused, self.num_classes, "fc_out_1", ("embed", "classes"), self.dtype)
        return logits.astype(jnp.float32), {"features": fused, "weights": weights}


# ---------------------------------------------------------------------------------------------------------
# Audio-Guided Transformer


class CrossAttention(nn.Module):
    """Multi-head attention of queries `x` [B, Tq, d] over `context` [B, Tk, d]; `mask` [B, Tk] marks keys."""

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, mask: Optional[jax.Array] = None, deterministic: bool = True):
        width = x.shape[-1]
        projection = functools.partial(
            nn.DenseGeneral, features=(self.num_heads, width // self.num_heads), dtype=self.dtype,
            kernel_init=layers.with_axes(nn.initializers.xavier_uniform(), "embed", "heads", "kv"),
            bias_init=layers.with_axes(nn.initializers.zeros, "heads", "kv"))
        q = projection(name="query")(x)
        k, v = projection(name="key")(context), projection(name="value")(context)
        dropout = None
        if self.dropout_rate > 0.0 and not deterministic:
            dropout = functools.partial(nn.Dropout(self.dropout_rate), deterministic=False)
        key_mask = None if mask is None else mask[:, None, None, :]
        out = layers.dot_product_attention(q, k, v, key_mask, dropout)
        return nn.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype, name="out",
            kernel_init=layers.with_axes(nn.initializers.xavier_uniform(), "heads", "kv", "embed"),
            bias_init=layers.with_axes(nn.initializers.zeros, "embed"))(out)


class ContextBlock(nn.Module):
    """Pre-LN cross block: q + Drop(CrossAttn(LN q, LN ctx)), then q + FFN(LN q)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, context_mask, deterministic: bool):
        q = layers.layer_norm(1e-6, self.dtype, "norm_q")(x)
        kv = layers.layer_norm(1e-6, self.dtype, "norm_kv")(context)
        y = CrossAttention(self.num_heads, self.attention_dropout_rate, self.dtype, name="attn")(
            q, kv, context_mask, deterministic)
        x = x + nn.Dropout(self.dropout_rate)(y, deterministic)
        y = layers.Mlp(self.mlp_dim, dropout_rate=self.dropout_rate, dtype=self.dtype, name="mlp")(
            layers.layer_norm(1e-6, self.dtype, "norm_mlp")(x), deterministic)
        return x + y


class AudioGuidedTransformer(nn.Module):
    """AGT over `modalities` (feature names); `guide` is a feature name or a role (see the module docstring)."""

    modalities: tuple
    guide: str = "audio"
    roles: Optional[tuple] = None  # ((role, feature name), ...): overrides the name matching
    width: int = 128
    depth: int = 1
    self_depth: int = 1
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.0
    input_dropout: float = 0.1
    utt_tokens: int = 1
    frame_positions: bool = True
    gate: str = "softmax"  # "softmax" | "sigmoid"
    fuse: str = "guided"  # "guided": guide + guided branches; "all": + the other modalities' own streams
    num_classes: int = NUM_CLASSES
    dtype: Dtype = jnp.float32

    def guide_name(self) -> str:
        return resolve_guide(self.guide, self.modalities, dict(self.roles or ()))

    def stream_names(self) -> tuple:
        """The fused streams, in gate order: the guide, each guided branch, then (fuse="all") the others."""
        guide = self.guide_name()
        others = tuple(m for m in self.modalities if m != guide)
        return (guide,) + tuple(f"{guide}->{m}" for m in others) + (others if self.fuse == "all" else ())

    def _tokens(self, name, x, mask, deterministic):
        x = nn.Dropout(self.input_dropout)(x.astype(self.dtype), deterministic)
        if x.ndim == 2:  # utterance vector -> utt_tokens tokens
            tokens = _agt_linear(self.utt_tokens * self.width, f"proj_{name}", (None, "embed"), self.dtype)(x)
            return tokens.reshape(x.shape[0], self.utt_tokens, self.width), None
        tokens = _agt_linear(self.width, f"proj_{name}", (None, "embed"), self.dtype)(x)
        if self.frame_positions:
            tokens = tokens + jnp.asarray(sinusoidal_table(x.shape[1] + 1, self.width)[1:], self.dtype)
        return tokens, mask

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array], masks: Optional[Mapping[str, jax.Array]] = None,
                 deterministic: bool = True):
        if self.gate not in ("softmax", "sigmoid"):
            raise ValueError(f"gate={self.gate!r}; expected 'softmax' or 'sigmoid'")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.fuse not in ("guided", "all"):
            raise ValueError(f"fuse={self.fuse!r}; expected 'guided' or 'all'")
        _check_inputs(self.modalities, features)
        guide = self.guide_name()
        masks = masks or {}
        mlp_dim = self.mlp_ratio * self.width
        tokens, token_masks = {}, {}
        for name in self.modalities:  # intra-channel
            x, mask = self._tokens(name, features[name], masks.get(name), deterministic)
            attn_mask = None if mask is None else mask[:, None, None, :]
            for i in range(self.self_depth):
                x = layers.EncoderBlock(self.num_heads, mlp_dim, dropout_rate=self.dropout,
                                        attention_dropout_rate=self.attention_dropout, dtype=self.dtype,
                                        name=f"self_{name}_{i}")(x, 0.0, attn_mask, deterministic)
            tokens[name], token_masks[name] = layers.constrain(x), mask
        streams = [(guide, tokens[guide], token_masks[guide])]
        for name in self.modalities:  # inter-channel: the guide's tokens query each other modality
            if name == guide:
                continue
            q = tokens[guide]
            for i in range(self.depth):
                q = ContextBlock(self.num_heads, mlp_dim, self.dropout, self.attention_dropout, self.dtype,
                                 name=f"context_{name}_{i}")(q, tokens[name], token_masks[name], deterministic)
            streams.append((f"{guide}->{name}", q, token_masks[guide]))  # the guide's tokens, updated
        if self.fuse == "all":
            streams += [(name, tokens[name], token_masks[name]) for name in self.modalities if name != guide]
        pooled = []
        for i, (_, x, mask) in enumerate(streams):
            pooled.append(layers.layer_norm(1e-6, self.dtype, f"norm_stream_{i}")(_masked_mean(x, mask)))
        gate = layers.dense(len(pooled), "gate", ("embed", None), self.dtype, kernel_init=nn.initializers.zeros)
        gate_logits = gate(jnp.concatenate(pooled, axis=-1))
        gates = jax.nn.softmax(gate_logits, -1) if self.gate == "softmax" else jax.nn.sigmoid(gate_logits)
        fused = jnp.einsum("bsd,bs->bd", jnp.stack(pooled, axis=1), gates)
        fused_dropped = nn.Dropout(self.dropout)(fused, deterministic)
        logits = _agt_linear(self.num_classes, "head", ("embed", "classes"), self.dtype)(fused_dropped)
        return logits.astype(jnp.float32), {"features": fused, "gates": gates}  # gates in `stream_names()` order


def _check_inputs(modalities, features) -> None:
    missing = [m for m in modalities if m not in features]
    if missing:
        raise ValueError(f"features lack {missing}; the model reads {tuple(modalities)}, got {sorted(features)}")
    for name in modalities:
        if features[name].ndim not in (2, 3):
            raise ValueError(f"features[{name!r}] must be [B, D] or [B, T, D], got shape {features[name].shape}")


# ---------------------------------------------------------------------------------------------------------


MODELS = {"attention": MERToolsAttention, "agt": AudioGuidedTransformer}


def create(variant: Optional[str] = None, **fields) -> nn.Module:
    """The model named by `variant`: "agt" (`AudioGuidedTransformer`, the default) or "attention"
    (`MERToolsAttention`), with its dataclass `fields` (`modalities`, the feature names, is required)."""
    name = "agt" if variant is None else variant
    if name not in MODELS:
        raise ValueError(f"model name {name!r}: expected one of {sorted(MODELS)}")
    model = MODELS[name](**fields)
    if isinstance(model, AudioGuidedTransformer):
        model.guide_name()  # fail at creation on a guide that matches no feature
    return model
