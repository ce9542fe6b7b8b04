"""The MERTools MER2024 "attention" baseline re-expressed in PyTorch, for the parity test of
`jaxemo.models.agt.MERToolsAttention` (utterance-level features).

It follows the structure of zeroQiaoba/MERTools `MER2024/toolkit/models/attention.py` and
`modules/encoder.py` (MLPEncoder: Dropout -> 3 x (Linear, ReLU); fusion MLPEncoder on the concatenation;
`fc_att` raw weights without softmax; `fc_out_1` logits), generalised from (audio, text, video) to any
number of named features, whose encoders live in a ModuleDict.

    net = mertools_attention_torch.build({"audio": 32, "text": 48}, hidden_dim=16, dropout=0.3)
    mertools_attention_torch.load_jaxemo_params(net, params)   # MERToolsAttention params -> net
    logits, fused = net({"audio": a, "text": t})              # [B, D] tensors

Importing this module needs no torch: the classes are defined on the first call of `modules()`.
"""

from __future__ import annotations

import functools
import types

import numpy as np


@functools.cache
def modules() -> types.SimpleNamespace:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MLPEncoder(nn.Module):
        def __init__(self, in_size, hidden_size, dropout):
            super().__init__()
            self.drop = nn.Dropout(p=dropout)
            self.linear_1 = nn.Linear(in_size, hidden_size)
            self.linear_2 = nn.Linear(hidden_size, hidden_size)
            self.linear_3 = nn.Linear(hidden_size, hidden_size)

        def forward(self, x):
            y = F.relu(self.linear_1(self.drop(x)))
            y = F.relu(self.linear_2(y))
            return F.relu(self.linear_3(y))

    class Attention(nn.Module):
        def __init__(self, dims: dict, hidden_dim: int, dropout: float, num_classes: int = 6):
            super().__init__()
            self.names = tuple(dims)
            self.encoders = nn.ModuleDict({n: MLPEncoder(d, hidden_dim, dropout) for n, d in dims.items()})
            self.attention_mlp = MLPEncoder(hidden_dim * len(dims), hidden_dim, dropout)
            self.fc_att = nn.Linear(hidden_dim, len(dims))
            self.fc_out_1 = nn.Linear(hidden_dim, num_classes)

        def forward(self, batch: dict):
            hidden = [self.encoders[n](batch[n]) for n in self.names]
            attention = self.fc_att(self.attention_mlp(torch.cat(hidden, dim=1)))  # [B, n], no softmax
            stacked = torch.stack(hidden, dim=2)  # [B, h, n]
            fused = torch.matmul(stacked, attention.unsqueeze(2)).squeeze(2)  # [B, h]
            return self.fc_out_1(fused), fused

    return types.SimpleNamespace(MLPEncoder=MLPEncoder, Attention=Attention, torch=torch)


def build(dims: dict, hidden_dim: int = 128, dropout: float = 0.3, num_classes: int = 6):
    return modules().Attention(dict(dims), hidden_dim, dropout, num_classes)


def _copy_linear(linear, params) -> None:
    torch = modules().torch
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.asarray(params["kernel"], np.float32).T.copy()))
        linear.bias.copy_(torch.from_numpy(np.asarray(params["bias"], np.float32).copy()))


def load_jaxemo_params(net, params: dict) -> None:
    """Copies unboxed `MERToolsAttention` params (utterance-level encoders) into `net`."""
    for name in net.names:
        for i in (1, 2, 3):
            _copy_linear(getattr(net.encoders[name], f"linear_{i}"), params[f"encoder_{name}"][f"linear_{i}"])
    for i in (1, 2, 3):
        _copy_linear(getattr(net.attention_mlp, f"linear_{i}"), params["attention_mlp"][f"linear_{i}"])
    _copy_linear(net.fc_att, params["fc_att"])
    _copy_linear(net.fc_out_1, params["fc_out_1"])
