"""CASP's backbones re-expressed in PyTorch, for the parity test and the latency benchmark's PyTorch column.

It follows zrguo/CASP (`models/model.py`: Latefusion / Earlyfusion; `modules/transformer.py`,
`modules/multihead_attention.py`, `modules/position_embedding.py`): sequence-first `[T, B, D]` tensors, a
fused `in_proj_weight`, queries scaled by head_dim^-0.5, fairseq sinusoidal positions from `make_positions`
on the first input channel (0 = padding: the zero-position quirk), pre-LN layers, a final LayerNorm.

    net = casp_torch.build("late", dims=(768, 5, 20))      # random weights, module names as the reference
    casp_torch.load_jaxemo_params(net, params)             # jaxemo `SentimentRegressor` params -> net
    score, representation = net([text, audio, vision])    # [B, T, D] each, as the reference's forward

`adapt_then_predict` is the per-sample loop the latency benchmark times: episodic adaptation of the
LayerNorms of one sample with torch's autograd and Adam, the way a PyTorch user would write it.

Importing this module needs no torch: the classes are defined on the first call of `modules()`.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np


@functools.cache
def modules() -> types.SimpleNamespace:
    import torch
    import torch.nn.functional as F
    from torch import nn

    def sinusoidal(num, dim):
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
        angles = torch.arange(num, dtype=torch.float)[:, None] * freqs[None, :]
        table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        if dim % 2:
            table = torch.cat([table, torch.zeros(num, 1)], dim=1)
        table[0] = 0
        return table

    class MultiheadAttention(nn.Module):
        def __init__(self, dim, heads, attn_dropout):
            super().__init__()
            self.heads, self.head_dim, self.attn_dropout = heads, dim // heads, attn_dropout
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
            self.out_proj = nn.Linear(dim, dim)
            nn.init.xavier_uniform_(self.in_proj_weight)

        def forward(self, x):  # [T, B, D]
            steps, batch, dim = x.shape
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            split = lambda t: t.contiguous().view(steps, batch * self.heads, self.head_dim).transpose(0, 1)
            q, k, v = split(q * self.head_dim**-0.5), split(k), split(v)
            weights = F.softmax(torch.bmm(q, k.transpose(1, 2)).float(), dim=-1).type_as(q)
            weights = F.dropout(weights, p=self.attn_dropout, training=self.training)
            out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(steps, batch, dim)
            return self.out_proj(out)

    class EncoderLayer(nn.Module):
        def __init__(self, dim, heads, attn_dropout, relu_dropout, res_dropout):
            super().__init__()
            self.self_attn = MultiheadAttention(dim, heads, attn_dropout)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.layer_norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
            self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

        def forward(self, x):
            h = self.self_attn(self.layer_norms[0](x))
            x = x + F.dropout(h, p=self.res_dropout, training=self.training)
            h = F.dropout(F.relu(self.fc1(self.layer_norms[1](x))), p=self.relu_dropout, training=self.training)
            return x + F.dropout(self.fc2(h), p=self.res_dropout, training=self.training)

    class TransformerEncoder(nn.Module):
        def __init__(self, dim, heads, depth, attn_dropout, relu_dropout, res_dropout, embed_dropout):
            super().__init__()
            self.layers = nn.ModuleList([EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
                                         for _ in range(depth)])
            self.layer_norm = nn.LayerNorm(dim)
            self.embed_dropout = embed_dropout

        def forward(self, x_in):  # [T, B, D]
            steps = x_in.shape[0]
            first = x_in.transpose(0, 1)[:, :, 0]  # fairseq make_positions on the first channel
            ids = torch.arange(1, steps + 1, device=x_in.device).expand_as(first)
            ids = torch.where(first != 0, ids, torch.zeros_like(ids))
            x = math.sqrt(x_in.shape[-1]) * x_in + sinusoidal(steps + 1, x_in.shape[-1])[ids].transpose(0, 1)
            x = F.dropout(x, p=self.embed_dropout, training=self.training)
            for layer in self.layers:
                x = layer(x)
            return self.layer_norm(x)

    class Backbone(nn.Module):
        """Latefusion (`fusion="late"`) or Earlyfusion, with the reference's module names."""

        def __init__(self, fusion, dims, proj_dim=40, heads=8, depth=5, attn_dropout=0.1, relu_dropout=0.1,
                     res_dropout=0.1, embed_dropout=0.25, out_dropout=0.0):
            super().__init__()
            self.fusion, self.out_dropout = fusion, out_dropout
            self.proj = nn.ModuleList([nn.Conv1d(d, proj_dim, kernel_size=1) for d in dims])
            encoder = lambda: TransformerEncoder(proj_dim, heads, depth, attn_dropout, relu_dropout, res_dropout,
                                                 embed_dropout)
            if fusion == "late":
                self.encoders = nn.ModuleList([encoder() for _ in dims])
                self.out_layer_proj0 = nn.Linear(len(dims) * proj_dim, proj_dim)
            else:
                self.fusion_encoder = encoder()
            self.out_layer_proj1 = nn.Linear(proj_dim, proj_dim)
            self.out_layer_proj2 = nn.Linear(proj_dim, proj_dim)
            self.out_layer = nn.Linear(proj_dim, 1)

        def forward(self, x):
            projected = [p(m.transpose(1, 2)).permute(2, 0, 1) for p, m in zip(self.proj, x)]  # [T, B, P]
            if self.fusion == "late":
                rep = torch.cat([e(h)[0] for e, h in zip(self.encoders, projected)], dim=-1)
                h = F.relu(self.out_layer_proj0(rep))
            else:
                h = rep = self.fusion_encoder(torch.cat(projected))[0]
            z = self.out_layer_proj2(F.dropout(F.relu(self.out_layer_proj1(h)), p=self.out_dropout,
                                               training=self.training))
            return self.out_layer(z + h)[:, 0], rep

    return types.SimpleNamespace(Backbone=Backbone, torch=torch, F=F)


def build(fusion: str, dims, **sizes):
    return modules().Backbone(fusion, dims, **sizes)


def _attention_to_torch(attn: dict) -> dict:
    """jaxemo's q/k/v DenseGeneral [D, H, Dh] and out [H, Dh, D] -> fused in_proj and out_proj (numpy)."""
    dim = attn["query"]["kernel"].shape[0]
    weight = np.concatenate([np.asarray(attn[n]["kernel"]).reshape(dim, dim).T for n in ("query", "key", "value")])
    bias = np.concatenate([np.asarray(attn[n]["bias"]).reshape(dim) for n in ("query", "key", "value")])
    return {"in_proj_weight": weight, "in_proj_bias": bias,
            "out_proj.weight": np.asarray(attn["out"]["kernel"]).reshape(dim, dim).T,
            "out_proj.bias": np.asarray(attn["out"]["bias"])}


def _encoder_to_torch(encoder: dict, prefix: str) -> dict:
    state = {}
    layers = sorted((k for k in encoder if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    for i, name in enumerate(layers):
        layer, p = encoder[name], f"{prefix}.layers.{i}"
        for k, v in _attention_to_torch(layer["self_attn"]).items():
            state[f"{p}.self_attn.{k}"] = v
        for fc in ("fc1", "fc2"):
            state[f"{p}.{fc}.weight"] = np.asarray(layer[fc]["kernel"]).T
            state[f"{p}.{fc}.bias"] = np.asarray(layer[fc]["bias"])
        for j in (0, 1):
            state[f"{p}.layer_norms.{j}.weight"] = np.asarray(layer[f"layer_norms_{j}"]["scale"])
            state[f"{p}.layer_norms.{j}.bias"] = np.asarray(layer[f"layer_norms_{j}"]["bias"])
    state[f"{prefix}.layer_norm.weight"] = np.asarray(encoder["layer_norm"]["scale"])
    state[f"{prefix}.layer_norm.bias"] = np.asarray(encoder["layer_norm"]["bias"])
    return state


def jaxemo_to_state_dict(params: dict, fusion: str) -> dict:
    """jaxemo `SentimentRegressor` params -> the reference's state-dict names (numpy arrays)."""
    state = {}
    for i, m in enumerate(("text", "audio", "vision")):
        state[f"proj.{i}.weight"] = np.asarray(params[f"proj_{m}"]["kernel"]).T[:, :, None]
        state[f"proj.{i}.bias"] = np.asarray(params[f"proj_{m}"]["bias"])
        if fusion == "late":
            state.update(_encoder_to_torch(params[f"encoder_{m}"], f"encoders.{i}"))
    if fusion == "late":
        state["out_layer_proj0.weight"] = np.asarray(params["out_layer_proj0"]["kernel"]).T
        state["out_layer_proj0.bias"] = np.asarray(params["out_layer_proj0"]["bias"])
    else:
        state.update(_encoder_to_torch(params["fusion"], "fusion_encoder"))
    for name in ("out_layer_proj1", "out_layer_proj2", "out_layer"):
        state[f"{name}.weight"] = np.asarray(params["head"][name]["kernel"]).T
        state[f"{name}.bias"] = np.asarray(params["head"][name]["bias"])
    return state


def load_jaxemo_params(net, params: dict) -> None:
    torch = modules().torch
    state = jaxemo_to_state_dict(params, net.fusion)
    net.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()},
                        strict=True)


def adapt_then_predict(net, source_norms: dict, sample, steps: int, views: int, temperature: float = 0.5,
                       learning_rate: float = 1e-3, clip_norm: float = 0.8):
    """Episodic CASP for one sample in PyTorch: reset the LayerNorms to `source_norms`, then `steps` Adam
    steps on `views` copies (a random modality zeroed per copy, dropout on) of -cos(full, dropped) / T, then
    the eval-mode score. `sample` is (text, audio, vision), each [T, D]."""
    ns = modules()
    torch, F = ns.torch, ns.F
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in source_norms:
                p.copy_(source_norms[name])
    adapted = [p for name, p in net.named_parameters() if name in source_norms]
    optimizer = torch.optim.Adam(adapted, lr=learning_rate)
    copies = [m.unsqueeze(0).expand(views, *m.shape) for m in sample]
    net.train()
    for _ in range(steps):
        drop = torch.randint(0, 3, (views,))
        dropped = [c * (drop != i).float()[:, None, None] for i, c in enumerate(copies)]
        _, full = net(list(copies))
        _, rep = net(dropped)
        loss = -(F.normalize(full, dim=-1) * F.normalize(rep, dim=-1)).sum(-1).mean() / temperature
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapted, clip_norm)
        optimizer.step()
    net.eval()
    with torch.inference_mode():
        return net([m.unsqueeze(0) for m in sample])[0][0]


def freeze_like_casp(net) -> None:
    """`requires_grad` only on the per-layer LayerNorms, as CASP's `fix_para` (no other weight gradients)."""
    for name, p in net.named_parameters():
        p.requires_grad_("layer_norms" in name)


def layer_norm_state(net) -> dict:
    """The per-layer LayerNorm parameters CASP adapts (`fix_para`: names containing "layer_norms")."""
    return {name: p.detach().clone() for name, p in net.named_parameters() if "layer_norms" in name}
