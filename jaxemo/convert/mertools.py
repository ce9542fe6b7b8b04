"""MERTools' MER2024 "attention" baseline (PyTorch) <-> `jaxemo.models.agt.MERToolsAttention` params.

    sources = {"hubert": "audio", "clip": "video", "baichuan": "text"}    # jaxemo's fusion order -> slot
    params, info = from_mertools_state_dict(state_dict, sources)
    model = agt.MERToolsAttention(**info["model_fields"], dropout=...)   # modalities, hidden_dim, ...
    state_dict = to_mertools_state_dict(params, sources)                 # Attention(args).load_state_dict(sd)

The sources (zeroQiaoba/MERTools `MER2024/toolkit/models/attention.py`, `attention_topn.py`,
`modules/encoder.py`) are the modules `Attention` (three encoders `audio_encoder`, `text_encoder`,
`video_encoder`, fused in that order) and `Attention_TOPN` (`encoder0` ... `encoder{N-1}`, fused in index
order). `sources` names, in jaxemo's fusion order, each jaxemo feature and the MERTools slot it comes from:
"audio", "text", "video" (`Attention`) or "encoder<k>" (`Attention_TOPN`), as a mapping or (name, slot)
pairs; every slot of the state dict is used exactly once (the fusion layers see all of them). Where each
entry goes (E = a slot's encoder prefix, e.g. `audio_encoder.`; kernels are torch weights transposed):

    E.linear_{1,2,3}.weight/.bias      (utt)  -> encoder_<name>/linear_{1,2,3}/kernel [in, h], bias
    E.rnn.weight_ih_l0 [4h, D]         (frm)  -> encoder_<name>/rnn/input_kernel [D, 4h]
    E.rnn.weight_hh_l0 [4h, h]                -> encoder_<name>/rnn/recurrent_kernel [h, 4h]
    E.rnn.bias_ih_l0, E.rnn.bias_hh_l0 [4h]   -> encoder_<name>/rnn/bias_ih, bias_hh (gates i, f, g, o in both)
    E.linear_1 (frm)                          -> encoder_<name>/linear_1
    attention_mlp.linear_1 [h, n h]           -> attention_mlp/linear_1/kernel [n h, h]: its input is the
                                                 concatenation of the encoders' outputs, MERTools' in its slot
                                                 order (audio, text, video), jaxemo's in its own (e.g. audio,
                                                 video, text): the kernel's row blocks are permuted to match
    attention_mlp.linear_{2,3}                -> attention_mlp/linear_{2,3}
    fc_att [n, h]                             -> fc_att: one raw weight per modality, its outputs (rows and
                                                 bias) permuted from slot order to jaxemo's order
    fc_out_1 [C, h]                           -> fc_out_1 (the emotion logits)
    fc_out_2 [V, h]                           -> dropped: the valence head, which MERToolsAttention lacks
                                                 (V = 0 in MER2024: `output_dim2 = 0`; 1 in MER2023)

With these permutations the jaxemo model computes MERTools' logits exactly (its fusion weights come out in
jaxemo's order). Frame-level MERTools (`feat_type` frm_align / frm_unalign) runs its LSTM over front-padded
sequences, zeros included: build the jaxemo model with `lstm_front_padding=True` (as `info["model_fields"]`
does) to reproduce that on jaxemo's end-padded inputs and masks. A `model.` prefix on every key (the state dict
of MERTools' `get_models` wrapper) and a `module.` one (DataParallel) are stripped. MERTools' training script
saves no weights of this model (its `--savemodel` only covers e2e models): save `model.state_dict()` yourself.
A missing key, a wrong shape or an unexpected key (a second LSTM layer, a bidirectional one) is a ValueError
naming the key. `python -m jaxemo.convert mertools <file> <output_dir> --features name=slot,...` runs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from jaxemo.convert.common import StateDictReader, as_float32, dense_params
from jaxemo.convert.torch_state import DATA_PARALLEL_PREFIX, read_checkpoint

ATTENTION_SLOTS = ("audio", "text", "video")  # MERTools' Attention: its fusion order
WRAPPER_PREFIX = "model."  # MERTools' get_models(args) holds the network as `self.model`
VALENCE_HEAD = "fc_out_2"
_LAYOUT = "MERTools attention baseline (MER2024/toolkit/models/attention.py)"
_TOPN = re.compile(r"encoder(\d+)$")

Sources = Union[Mapping[str, str], Sequence[tuple[str, str]]]


def _slot_prefix(slot: str) -> str:
    return f"{slot}_encoder." if slot in ATTENTION_SLOTS else f"{slot}."


def _normalise_slot(slot: str) -> str:
    slot = str(slot)
    return slot[:-len("_encoder")] if slot.endswith("_encoder") else slot


def _pairs(sources: Sources) -> list[tuple[str, str]]:
    pairs = list(sources.items()) if isinstance(sources, Mapping) else [tuple(p) for p in sources]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"sources: expected (jaxemo feature name, MERTools slot) pairs in jaxemo's fusion order, "
                         f"got {sources!r}")
    pairs = [(str(name), _normalise_slot(slot)) for name, slot in pairs]
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"sources: a feature name appears twice in {names}")
    return pairs


def _check_slots(pairs: list[tuple[str, str]], slots: Sequence[str], where: str) -> list[int]:
    """The index in `slots` (MERTools' order) of each pair's slot; every slot exactly once."""
    given = [slot for _, slot in pairs]
    unknown = [slot for slot in given if slot not in slots]
    if unknown:
        raise ValueError(f"sources name slot(s) {unknown} that {where} does not have: its slots are {list(slots)}")
    if sorted(given) != sorted(slots):
        missing = [slot for slot in slots if slot not in given]
        twice = sorted({slot for slot in given if given.count(slot) > 1})
        raise ValueError(f"sources must use each of {where}'s slots {list(slots)} exactly once (the fusion "
                         f"layers read all of them): missing {missing}, repeated {twice}")
    return [list(slots).index(slot) for slot in given]


def _strip_prefixes(state_dict: Mapping[str, Any]) -> tuple[dict, str]:
    stripped, keys = "", dict(state_dict)
    for prefix in (DATA_PARALLEL_PREFIX, WRAPPER_PREFIX):
        if keys and all(isinstance(k, str) and k.startswith(prefix) for k in keys):
            keys = {k[len(prefix):]: v for k, v in keys.items()}
            stripped += prefix
    return keys, stripped


def state_dict_slots(state_dict: Mapping[str, Any]) -> tuple[str, ...]:
    """The encoder slots of a (prefix-stripped) MERTools state dict, in its fusion order."""
    heads = {k.split(".", 1)[0] for k in state_dict}
    named = sorted(h for h in heads if h.endswith("_encoder"))
    indexed = sorted(int(m.group(1)) for h in heads if (m := _TOPN.match(h)))
    if named and indexed:
        raise ValueError(f"the state dict has both named encoders {named} (Attention) and encoder<k> ones "
                         f"(Attention_TOPN)")
    if named:
        unknown = [h for h in named if h[:-len("_encoder")] not in ATTENTION_SLOTS]
        missing = [f"{s}_encoder.*" for s in ATTENTION_SLOTS if f"{s}_encoder" not in heads]
        if unknown or missing:
            raise ValueError(f"the {_LAYOUT} state dict has encoders audio_encoder, text_encoder, video_encoder; "
                             f"missing key(s) {missing}, unknown encoder(s) {unknown}")
        return ATTENTION_SLOTS
    if indexed:
        if indexed != list(range(len(indexed))):
            gap = min(set(range(max(indexed) + 1)) - set(indexed))
            raise ValueError(f"missing key(s) encoder{gap}.*: found encoders {indexed} (Attention_TOPN numbers "
                             f"them 0 ... N-1)")
        return tuple(f"encoder{i}" for i in indexed)
    raise ValueError(f"missing key(s) audio_encoder.* / encoder0.*: not a {_LAYOUT} (or attention_topn) state "
                     f"dict; its keys start with {sorted(heads)[:8]}")


def _encoder_from(reader: StateDictReader, slot: str, hidden: int) -> tuple[dict, int, bool]:
    """(params, input dim, frame level) of one slot's encoder."""
    at = _slot_prefix(slot)
    if reader.has(at + "rnn.weight_ih_l0"):
        extra = [k for k in reader.arrays if k.startswith(at + "rnn.") and not k.endswith("_l0")]
        if extra:
            raise ValueError(f"unexpected key(s) {sorted(extra)}: MERToolsAttention's LSTM has one layer, one "
                             f"direction (MERTools' LSTMEncoder defaults)")
        w_ih = reader.get(at + "rnn.weight_ih_l0", (4 * hidden, None))
        w_hh = reader.get(at + "rnn.weight_hh_l0", (4 * hidden, hidden))
        rnn = {"input_kernel": w_ih.T, "recurrent_kernel": w_hh.T,
               "bias_ih": reader.get(at + "rnn.bias_ih_l0", (4 * hidden,)),
               "bias_hh": reader.get(at + "rnn.bias_hh_l0", (4 * hidden,))}
        linear = dense_params(*reader.linear(at + "linear_1", (hidden, hidden)))
        return {"rnn": rnn, "linear_1": linear}, int(w_ih.shape[1]), True
    first = reader.linear(at + "linear_1", (hidden, None))
    encoder = {"linear_1": dense_params(*first)}
    for i in (2, 3):
        encoder[f"linear_{i}"] = dense_params(*reader.linear(f"{at}linear_{i}", (hidden, hidden)))
    return encoder, int(first[0].shape[1]), False


def _contiguous(tree):
    if isinstance(tree, dict):
        return {k: _contiguous(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)


def convert_mertools_state_dict(state_dict: Mapping[str, Any], sources: Sources) -> tuple[dict, dict]:
    """A MERTools `Attention` / `Attention_TOPN` state dict -> (MERToolsAttention params, info).

    info: layout ("attention" / "attention_topn"), modalities (jaxemo's order), sources {name: slot},
    slots (MERTools' fusion order), hidden_dim, num_classes, dims {name: input dim}, frame_level {name: bool},
    dropped (the `fc_out_2` keys), prefix (stripped from every key), model_fields (for MERToolsAttention).
    """
    arrays, prefix = _strip_prefixes(state_dict)
    slots = state_dict_slots(arrays)
    layout = "attention" if slots == ATTENTION_SLOTS else "attention_topn"
    pairs = _pairs(sources)
    order = _check_slots(pairs, slots, f"the state dict ({layout})")
    reader = StateDictReader(arrays, "", _LAYOUT, " (MERTools' Attention / Attention_TOPN module)")
    n = len(slots)
    fc_att_weight, fc_att_bias = reader.linear("fc_att", (n, None))
    hidden = int(fc_att_weight.shape[1])

    params, dims, frame_level = {}, {}, {}
    for name, slot in pairs:
        params[f"encoder_{name}"], dims[name], frame_level[name] = _encoder_from(reader, slot, hidden)
    mlp_weight, mlp_bias = reader.linear("attention_mlp.linear_1", (hidden, n * hidden))
    kernel = mlp_weight.T.reshape(n, hidden, hidden)[order].reshape(n * hidden, hidden)  # row blocks: jaxemo order
    params["attention_mlp"] = {"linear_1": {"kernel": kernel, "bias": mlp_bias}}
    for i in (2, 3):
        params["attention_mlp"][f"linear_{i}"] = dense_params(*reader.linear(f"attention_mlp.linear_{i}",
                                                                             (hidden, hidden)))
    params["fc_att"] = {"kernel": fc_att_weight[order].T, "bias": fc_att_bias[order]}
    head = reader.linear("fc_out_1", (None, hidden))
    params["fc_out_1"] = dense_params(*head)
    if reader.has(VALENCE_HEAD + ".weight"):
        reader.linear(VALENCE_HEAD, (None, hidden))  # checked, then dropped
    dropped = sorted(k for k in reader.used if k.startswith(VALENCE_HEAD + "."))
    unexpected = reader.unused()
    if unexpected:
        raise ValueError(f"unexpected key(s) in the {_LAYOUT} state dict ({layout}, slots {list(slots)}): "
                         f"{unexpected}")
    modalities = tuple(name for name, _ in pairs)
    num_classes = int(head[0].shape[0])
    info = {"layout": layout, "modalities": modalities, "sources": dict(pairs), "slots": slots,
            "hidden_dim": hidden, "num_classes": num_classes, "dims": dims, "frame_level": frame_level,
            "dropped": dropped, "prefix": prefix,
            "model_fields": {"modalities": modalities, "hidden_dim": hidden, "num_classes": num_classes,
                             "lstm_front_padding": any(frame_level.values())}}
    return _contiguous(params), info


def from_mertools_state_dict(state_dict: Mapping[str, Any], sources: Sources) -> dict:
    """A MERTools attention-baseline state dict -> MERToolsAttention params (float32 numpy); see the module
    docstring for `sources` and `convert_mertools_state_dict` for the info it also gives."""
    return convert_mertools_state_dict(state_dict, sources)[0]


def to_mertools_state_dict(params: Mapping[str, Any], sources: Sources, output_dim2: int = 0) -> dict:
    """MERToolsAttention params -> the state dict of MERTools' `Attention` (slots audio, text, video) or
    `Attention_TOPN` (slots encoder0 ... encoder{N-1}), its keys in the module's order, float32 numpy.

    `sources` as for reading (jaxemo's names in the params' fusion order -> slots). MERToolsAttention has no
    valence head: `fc_out_2` is written as zeros of `output_dim2` outputs (0, MER2024's, by default: an empty
    Linear), so that `load_state_dict(strict=True)` accepts the result.
    """
    pairs = _pairs(sources)
    given = [slot for _, slot in pairs]
    if all(slot in ATTENTION_SLOTS for slot in given):
        slots = ATTENTION_SLOTS
    else:
        slots = tuple(f"encoder{i}" for i in range(len(pairs)))
    order = _check_slots(pairs, slots, "MERTools' Attention" if slots == ATTENTION_SLOTS else "Attention_TOPN")
    missing = [k for k in [f"encoder_{name}" for name, _ in pairs] + ["attention_mlp", "fc_att", "fc_out_1"]
               if k not in params]
    if missing:
        raise ValueError(f"params lack {missing}: expected MERToolsAttention params over {[n for n, _ in pairs]}")
    by_slot = {slot: name for name, slot in pairs}
    inverse = np.argsort(order)  # jaxemo position of each slot
    state: dict[str, np.ndarray] = {}

    def linear(key: str, p: Mapping) -> None:
        state[key + ".weight"] = as_float32(p["kernel"]).T
        state[key + ".bias"] = as_float32(p["bias"])

    for slot in slots:
        encoder, at = params[f"encoder_{by_slot[slot]}"], _slot_prefix(slot)
        if "rnn" in encoder:
            rnn = encoder["rnn"]
            state[at + "rnn.weight_ih_l0"] = as_float32(rnn["input_kernel"]).T
            state[at + "rnn.weight_hh_l0"] = as_float32(rnn["recurrent_kernel"]).T
            state[at + "rnn.bias_ih_l0"] = as_float32(rnn["bias_ih"])
            state[at + "rnn.bias_hh_l0"] = as_float32(rnn["bias_hh"])
            linear(at + "linear_1", encoder["linear_1"])
        else:
            for i in (1, 2, 3):
                linear(f"{at}linear_{i}", encoder[f"linear_{i}"])
    mlp = params["attention_mlp"]
    n = len(slots)
    kernel = as_float32(mlp["linear_1"]["kernel"])
    hidden = kernel.shape[1]
    blocks = kernel.reshape(n, hidden, hidden)[inverse]  # row blocks back in slot order
    state["attention_mlp.linear_1.weight"] = blocks.reshape(n * hidden, hidden).T
    state["attention_mlp.linear_1.bias"] = as_float32(mlp["linear_1"]["bias"])
    for i in (2, 3):
        linear(f"attention_mlp.linear_{i}", mlp[f"linear_{i}"])
    state["fc_att.weight"] = as_float32(params["fc_att"]["kernel"]).T[inverse]
    state["fc_att.bias"] = as_float32(params["fc_att"]["bias"])[inverse]
    linear("fc_out_1", params["fc_out_1"])
    state[VALENCE_HEAD + ".weight"] = np.zeros((output_dim2, hidden), np.float32)
    state[VALENCE_HEAD + ".bias"] = np.zeros((output_dim2,), np.float32)
    return {k: np.array(v, np.float32) for k, v in state.items()}  # contiguous, writable copies


def default_sources(state_dict: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Sources when none are given: `Attention`'s slots as features named audio, video, text (jaxemo's order:
    audio, video, text); `Attention_TOPN`'s encoder<k> as feat<k>, in index order."""
    slots = state_dict_slots(_strip_prefixes(state_dict)[0])
    if slots == ATTENTION_SLOTS:
        return [("audio", "audio"), ("video", "video"), ("text", "text")]
    return [(f"feat{i}", slot) for i, slot in enumerate(slots)]


def parse_sources(text: Optional[str]) -> Optional[list[tuple[str, str]]]:
    """"name=slot,name=slot,..." (jaxemo's fusion order) -> pairs; None / "" -> None."""
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        name, sep, slot = item.strip().partition("=")
        if not sep or not name or not slot:
            raise ValueError(f"--features {text!r}: expected name=slot,... (e.g. hubert=audio,clip=video,"
                             f"baichuan=text), got the item {item!r}")
        pairs.append((name.strip(), slot.strip()))
    return pairs


def load_mertools_checkpoint(path: str, sources: Optional[Sources] = None) -> tuple[dict, dict]:
    """A file holding a MERTools attention-baseline state dict -> (params, info); `sources` default as
    `default_sources`. The file is read by `jaxemo.convert.torch_state.read_checkpoint` (weights only)."""
    checkpoint = read_checkpoint(path, key="state_dict")
    state_dict = checkpoint.state_dict
    params, info = convert_mertools_state_dict(state_dict, sources or default_sources(state_dict))
    info["path"], info["prefix"] = path, checkpoint.stripped_prefix + info["prefix"]
    return params, info
