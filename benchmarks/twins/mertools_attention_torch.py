"""The MERTools MER2024 "attention" baseline re-expressed in PyTorch, for the parity tests of
`jaxemo.models.agt.MERToolsAttention` and of `jaxemo.convert.mertools`.

It follows the structure of zeroQiaoba/MERTools `MER2024/toolkit/models/attention.py`, `attention_topn.py`
and `modules/encoder.py` (MLPEncoder: Dropout -> 3 x (Linear, ReLU); LSTMEncoder: one nn.LSTM layer, its final
hidden state, Dropout, Linear; fusion MLPEncoder on the concatenation; `fc_att` raw weights without softmax;
`fc_out_1` logits), in two forms:

- `build`: generalised from (audio, text, video) to any number of named features, whose encoders live in a
  ModuleDict (`encoders.<name>`); features named in `frame_level` get an LSTMEncoder. `load_jaxemo_params`
  copies `MERToolsAttention` params into it.
- `build_mertools` / `build_topn`: MERTools' own module layout and state-dict keys (`audio_encoder`,
  `text_encoder`, `video_encoder` fused in that order, or `encoder0..N-1`; `rnn.weight_ih_l0` ...;
  `fc_out_2`, the valence head), with its batch keys ('audios', 'texts', 'videos' / 'feat0' ...) and its
  outputs (features, emos_out, vals_out), for the converter's tests.

    net = mertools_attention_torch.build({"audio": 32, "text": 48}, hidden_dim=16, dropout=0.3)
    mertools_attention_torch.load_jaxemo_params(net, params)   # MERToolsAttention params -> net
    logits, fused = net({"audio": a, "text": t})              # [B, D] (or [B, T, D] frame-level) tensors

The LSTM runs over every step it is given (as MERTools, whose loader pads frame sequences in front). Importing
this module needs no torch: the classes are defined on the first call of `modules()`.
"""

from __future__ import annotations

import functools
import types

import numpy as np

MERTOOLS_SLOTS = (("audio_encoder", "audios"), ("text_encoder", "texts"), ("video_encoder", "videos"))


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

    class LSTMEncoder(nn.Module):
        def __init__(self, in_size, hidden_size, dropout):
            super().__init__()
            self.rnn = nn.LSTM(in_size, hidden_size, num_layers=1, batch_first=True)
            self.dropout = nn.Dropout(dropout)
            self.linear_1 = nn.Linear(hidden_size, hidden_size)

        def forward(self, x):
            _, (h_last, _) = self.rnn(x)
            return self.linear_1(self.dropout(h_last.squeeze(0)))

    def fuse(hidden, attention_mlp, fc_att):
        attention = fc_att(attention_mlp(torch.cat(hidden, dim=1)))  # [B, n], no softmax
        stacked = torch.stack(hidden, dim=2)  # [B, h, n]
        return torch.matmul(stacked, attention.unsqueeze(2)).squeeze(2)  # [B, h]

    class Attention(nn.Module):
        def __init__(self, dims: dict, hidden_dim: int, dropout: float, num_classes: int = 6,
                     frame_level=()):
            super().__init__()
            self.names = tuple(dims)
            self.encoders = nn.ModuleDict({
                n: (LSTMEncoder if n in frame_level else MLPEncoder)(d, hidden_dim, dropout)
                for n, d in dims.items()})
            self.attention_mlp = MLPEncoder(hidden_dim * len(dims), hidden_dim, dropout)
            self.fc_att = nn.Linear(hidden_dim, len(dims))
            self.fc_out_1 = nn.Linear(hidden_dim, num_classes)

        def forward(self, batch: dict):
            fused = fuse([self.encoders[n](batch[n]) for n in self.names], self.attention_mlp, self.fc_att)
            return self.fc_out_1(fused), fused

    class MERToolsLayout(nn.Module):
        """MERTools' Attention / Attention_TOPN module tree: encoders as named attributes, fc_out_2 kept."""

        def __init__(self, slots, dims, hidden_dim, dropout, frame_level: bool, output_dim1, output_dim2):
            super().__init__()
            self.slots = tuple(slots)
            for (attribute, _), dim in zip(self.slots, dims):
                setattr(self, attribute, (LSTMEncoder if frame_level else MLPEncoder)(dim, hidden_dim, dropout))
            self.attention_mlp = MLPEncoder(hidden_dim * len(self.slots), hidden_dim, dropout)
            self.fc_att = nn.Linear(hidden_dim, len(self.slots))
            self.fc_out_1 = nn.Linear(hidden_dim, output_dim1)
            self.fc_out_2 = nn.Linear(hidden_dim, output_dim2)

        def forward(self, batch: dict):
            hidden = [getattr(self, attribute)(batch[key]) for attribute, key in self.slots]
            features = fuse(hidden, self.attention_mlp, self.fc_att)
            return features, self.fc_out_1(features), self.fc_out_2(features)

    return types.SimpleNamespace(MLPEncoder=MLPEncoder, LSTMEncoder=LSTMEncoder, Attention=Attention,
                                 MERToolsLayout=MERToolsLayout, torch=torch)


def build(dims: dict, hidden_dim: int = 128, dropout: float = 0.3, num_classes: int = 6, frame_level=()):
    """The generic twin: `dims` {feature: input dim} in fusion order; `frame_level` names LSTM-encoded ones."""
    return modules().Attention(dict(dims), hidden_dim, dropout, num_classes, tuple(frame_level))


def build_mertools(audio_dim: int, text_dim: int, video_dim: int, hidden_dim: int = 128, dropout: float = 0.3,
                   feat_type: str = "utt", output_dim1: int = 6, output_dim2: int = 0):
    """MERTools' `Attention(args)` layout (feat_type "utt", "frm_align" or "frm_unalign"); its forward takes
    {'audios', 'texts', 'videos'} and returns (features, emos_out, vals_out). MER2024 has output_dim2 = 0."""
    if feat_type not in ("utt", "frm_align", "frm_unalign"):
        raise ValueError(f"feat_type={feat_type!r}")
    return modules().MERToolsLayout(MERTOOLS_SLOTS, (audio_dim, text_dim, video_dim), hidden_dim, dropout,
                                    feat_type != "utt", output_dim1, output_dim2)


def build_topn(feat_dims, hidden_dim: int = 128, dropout: float = 0.3, output_dim1: int = 6,
               output_dim2: int = 0):
    """MERTools' `Attention_TOPN(args)` layout: `encoder{i}` (utterance level) reading batch['feat{i}']."""
    slots = [(f"encoder{i}", f"feat{i}") for i in range(len(feat_dims))]
    return modules().MERToolsLayout(slots, tuple(feat_dims), hidden_dim, dropout, False, output_dim1, output_dim2)


def _tensor(array):
    return modules().torch.from_numpy(np.ascontiguousarray(np.asarray(array, np.float32)))


def _copy_linear(linear, params) -> None:
    with modules().torch.no_grad():
        linear.weight.copy_(_tensor(np.asarray(params["kernel"]).T))
        linear.bias.copy_(_tensor(params["bias"]))


def _copy_lstm(rnn, params) -> None:
    with modules().torch.no_grad():
        rnn.weight_ih_l0.copy_(_tensor(np.asarray(params["input_kernel"]).T))
        rnn.weight_hh_l0.copy_(_tensor(np.asarray(params["recurrent_kernel"]).T))
        rnn.bias_ih_l0.copy_(_tensor(params["bias_ih"]))
        rnn.bias_hh_l0.copy_(_tensor(params["bias_hh"]))


def load_jaxemo_params(net, params: dict) -> None:
    """Copies unboxed `MERToolsAttention` params (utterance- or frame-level encoders) into a `build` twin."""
    lstm = modules().LSTMEncoder
    for name in net.names:
        encoder, source = net.encoders[name], params[f"encoder_{name}"]
        if isinstance(encoder, lstm):
            _copy_lstm(encoder.rnn, source["rnn"])
            _copy_linear(encoder.linear_1, source["linear_1"])
            continue
        for i in (1, 2, 3):
            _copy_linear(getattr(encoder, f"linear_{i}"), source[f"linear_{i}"])
    for i in (1, 2, 3):
        _copy_linear(getattr(net.attention_mlp, f"linear_{i}"), params["attention_mlp"][f"linear_{i}"])
    _copy_linear(net.fc_att, params["fc_att"])
    _copy_linear(net.fc_out_1, params["fc_out_1"])
