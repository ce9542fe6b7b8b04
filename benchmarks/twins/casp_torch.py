"""CASP's backbones re-expressed in PyTorch, for the parity test and the latency benchmark's PyTorch column.

It follows zrguo/CASP (`models/model.py`: Latefusion / Earlyfusion; `modules/transformer.py`,
`modules/multihead_attention.py`, `modules/position_embedding.py`): sequence-first `[T, B, D]` tensors, a
fused `in_proj_weight`, queries scaled by head_dim^-0.5, fairseq sinusoidal positions from `make_positions`
on the first *projected* channel (the encoder's input, i.e. the 1x1 projection's output; 0 = padding: the
zero-position quirk), pre-LN layers, a final LayerNorm. The modules carry the reference's attribute names and
buffers (`version`, `embed_positions._float_tensor`), so `net.state_dict()` has exactly the keys of the
reference's `Latefusion` / `Earlyfusion` state dict (`jaxemo.convert.casp` converts either way).

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

from jaxemo.convert import casp as casp_convert


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

    class SinusoidalPositionalEmbedding(nn.Module):
        """fairseq's, as the reference: `_float_tensor` only carries the dtype (and is in the state dict)."""

        def __init__(self, dim):
            super().__init__()
            self.dim = dim
            self.register_buffer("_float_tensor", torch.zeros(1))

        def forward(self, first):  # [B, T]: the first projected channel; 0 = padding (make_positions)
            steps = first.shape[1]
            ids = torch.arange(1, steps + 1, device=first.device).expand_as(first)
            ids = torch.where(first != 0, ids, torch.zeros_like(ids))
            return sinusoidal(steps + 1, self.dim).to(self._float_tensor)[ids]  # [B, T, D]

    class TransformerEncoder(nn.Module):
        def __init__(self, dim, heads, depth, attn_dropout, relu_dropout, res_dropout, embed_dropout):
            super().__init__()
            self.embed_positions = SinusoidalPositionalEmbedding(dim)
            self.layers = nn.ModuleList([EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
                                         for _ in range(depth)])
            self.register_buffer("version", torch.Tensor([2]))
            self.layer_norm = nn.LayerNorm(dim)
            self.embed_dropout = embed_dropout

        def forward(self, x_in):  # [T, B, D]
            positions = self.embed_positions(x_in.transpose(0, 1)[:, :, 0]).transpose(0, 1)
            x = math.sqrt(x_in.shape[-1]) * x_in + positions
            x = F.dropout(x, p=self.embed_dropout, training=self.training)
            for layer in self.layers:
                x = layer(x)
            return self.layer_norm(x)

    class Backbone(nn.Module):
        """Latefusion (`fusion_type="late"`) or Earlyfusion: `state_dict()` has the reference's keys."""

        def __init__(self, fusion, dims, proj_dim=40, heads=8, depth=5, attn_dropout=0.1, relu_dropout=0.1,
                     res_dropout=0.1, embed_dropout=0.25, out_dropout=0.0):
            super().__init__()
            self.fusion_type, self.out_dropout = fusion, out_dropout
            self.proj = nn.ModuleList([nn.Conv1d(d, proj_dim, kernel_size=1) for d in dims])
            encoder = lambda: TransformerEncoder(proj_dim, heads, depth, attn_dropout, relu_dropout, res_dropout,
                                                 embed_dropout)
            if fusion == "late":
                self.encoders = nn.ModuleList([encoder() for _ in dims])
                self.out_layer_proj0 = nn.Linear(len(dims) * proj_dim, proj_dim)
            elif fusion == "early":
                self.fusion = encoder()
            else:
                raise ValueError(f"fusion={fusion!r}; expected 'late' or 'early'")
            self.out_layer_proj1 = nn.Linear(proj_dim, proj_dim)
            self.out_layer_proj2 = nn.Linear(proj_dim, proj_dim)
            self.out_layer = nn.Linear(proj_dim, 1)

        def forward(self, x):
            projected = [p(m.transpose(1, 2)).permute(2, 0, 1) for p, m in zip(self.proj, x)]  # [T, B, P]
            if self.fusion_type == "late":
                rep = torch.cat([e(h)[0] for e, h in zip(self.encoders, projected)], dim=-1)
                h = F.relu(self.out_layer_proj0(rep))
            else:
                h = rep = self.fusion(torch.cat(projected))[0]
            z = self.out_layer_proj2(F.dropout(F.relu(self.out_layer_proj1(h)), p=self.out_dropout,
                                               training=self.training))
            return self.out_layer(z + h)[:, 0], rep

    return types.SimpleNamespace(Backbone=Backbone, torch=torch, F=F)


def build(fusion: str, dims, **sizes):
    return modules().Backbone(fusion, dims, **sizes)


def load_jaxemo_params(net, params: dict) -> None:
    """jaxemo `SentimentRegressor` params -> `net`, through the library's converter to the reference's names
    (`jaxemo.convert.casp.to_reference_state_dict`), loaded strictly."""
    torch = modules().torch
    state = casp_convert.to_reference_state_dict(params, net.fusion_type)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


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


def nt_xent(a, b, temperature: float = 0.5, loop: bool = True):
    """SimCLR's NT-Xent over the stacked [2N, R] views (positives i and i + N). `loop=True` computes it as
    CASP's `ContrastiveLoss` does, one Python-level term per anchor (2N small graphs); `loop=False` as one
    masked log-softmax over the similarity matrix."""
    ns = modules()
    torch, F = ns.torch, ns.F
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = a.shape[0]
    similarity = z @ z.T / temperature
    if not loop:
        logits = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(logits, positives)
    exp = torch.exp(similarity)
    total = 0.0
    for k in range(n):
        for i, j in ((k, k + n), (k + n, k)):
            not_i = torch.ones(2 * n).scatter_(0, torch.tensor([i]), 0.0)
            total = total - torch.log(exp[i, j] / (not_i * exp[i]).sum())
    return total / (2 * n)


def contrastive_epoch(net, batches: list, temperature: float = 0.5, learning_rate: float = 1e-3,
                      clip_norm: float = 0.8, loop: bool = True):
    """A callable running CASP's stage-1 epoch as the reference's loop does: per batch of (text, audio, vision)
    one modality zeroed for the whole batch, the full and the dropped view with dropout on, NT-Xent between
    their representations, backward, clipping to 0.8, Adam on the per-layer LayerNorms (`fix_para`)."""
    torch = modules().torch
    freeze_like_casp(net)
    adapted = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(adapted, lr=learning_rate)

    def epoch():
        net.train()
        for batch in batches:
            drop = int(torch.randint(0, 3, ()))
            dropped = [m * 0.0 if i == drop else m for i, m in enumerate(batch)]
            _, full = net(list(batch))
            _, rep = net(dropped)
            loss = nt_xent(full, rep, temperature, loop)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapted, clip_norm)
            optimizer.step()
        return loss

    return epoch


def freeze_like_casp(net) -> None:
    """`requires_grad` only on the per-layer LayerNorms, as CASP's `fix_para` (no other weight gradients)."""
    for name, p in net.named_parameters():
        p.requires_grad_("layer_norms" in name)


def layer_norm_state(net) -> dict:
    """The per-layer LayerNorm parameters CASP adapts (`fix_para`: names containing "layer_norms")."""
    return {name: p.detach().clone() for name, p in net.named_parameters() if "layer_norms" in name}


FRAMEWORK = "PyTorch (eager)"


def benchmark_steps(torch, case) -> dict:
    """{"train", "inference"} on the case's batch: the source-training step (L1, backward, gradient clipping,
    Adam on every parameter, dropout on) and an eval-mode forward, as the reference's `base_model_train`."""
    model, o = case.task.model, case.config.optimizer
    dims = [case.batch[m].shape[-1] for m in ("text", "audio", "vision")]
    net = build(model.fusion, dims, proj_dim=model.proj_dim, heads=model.num_heads, depth=model.depth,
                attn_dropout=model.attn_dropout, relu_dropout=model.relu_dropout, res_dropout=model.res_dropout,
                embed_dropout=model.embed_dropout, out_dropout=model.out_dropout)
    optimizer = torch.optim.Adam(net.parameters(), lr=o.learning_rate)
    inputs = [torch.from_numpy(case.batch[m]) for m in ("text", "audio", "vision")]
    labels = torch.from_numpy(case.batch["label"])

    def train():
        net.train()
        loss = torch.nn.functional.l1_loss(net(list(inputs))[0], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(net.parameters(), o.clip_norm)
        optimizer.step()
        return loss

    def inference():
        net.eval()
        with torch.inference_mode():
            return net(list(inputs))[0]

    return {"train": train, "inference": inference}
