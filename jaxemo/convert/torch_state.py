"""Reading PyTorch checkpoints: the one loader every jaxemo converter and `python -m jaxemo.convert` use.

    state_dict = load_state_dict("mae_pretrain_vit_base.pth")           # {name: torch tensor or numpy array}
    checkpoint = read_checkpoint("DFEW-set1-model_best.pth", key="state_dict")
    checkpoint.state_dict, checkpoint.format, checkpoint.entry, checkpoint.stripped_prefix

The kind of file is read off its content, not its name:

- `torch.save` files (`.pth`, `.pt`, `.bin`; zip or the legacy format), read with
  `torch.load(weights_only=True)`. Besides tensors they may hold plain containers (dict, OrderedDict, list,
  tuple), numbers, strings, None and `argparse.Namespace` (MAE's and UniEmoX's `save_model` store their
  `args`); nothing that runs code is unpickled. The state dict is the entry `key` names, else "state_dict",
  else "model" (the first that is a mapping), else the whole file.
- TorchScript archives (`torch.jit.save`, e.g. OpenAI's CLIP `.pt`): the scripted module's `state_dict()`.
- `.safetensors` files: numpy arrays (torch tensors when a dtype numpy lacks, such as bfloat16, is present).
- a directory in the Hugging Face layout: `model.safetensors` or `pytorch_model.bin`, their sharded
  `*.index.json`, or a single `*.safetensors` / `*.bin` file (a `config.json` beside them is the caller's).

Values are torch tensors (numpy arrays for safetensors), which `jaxemo.convert.common.to_numpy` takes. A
`module.` prefix on every key (`nn.DataParallel` / DDP) is stripped. A missing file is a FileNotFoundError;
a truncated, corrupt or unknown file a ValueError naming it; a pickle holding anything else (a whole
`nn.Module`, a custom class, a numpy array) an `UnsupportedCheckpointError` naming the file and the types,
with the one-line command that re-saves the weights as a plain state dict. Only the functions that read a
file import torch (this module itself needs no more than numpy, so the numpy-only converters can use it).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import json
import os
import pickle
import re
import shlex
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any, Optional

DATA_PARALLEL_PREFIX = "module."
STATE_DICT_ENTRIES = ("state_dict", "model")
# Beyond torch's weights-only defaults (tensors, containers, numbers, strings, None): argparse's plain record.
EXTRA_SAFE_TYPES = (argparse.Namespace,)
# safetensors dtypes numpy has no type for: such files are read with torch.
_TORCH_ONLY_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4")
_DESCRIPTION = "a torch.save file (.pth / .pt / .bin), a TorchScript archive or a .safetensors file"


class UnsupportedCheckpointError(ValueError):
    """A checkpoint that only full unpickling, which runs code from the file, could read."""


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
    """A read checkpoint: `state_dict` as the converters take it and how it was found."""

    path: str
    format: str  # "torch" (torch.save), "torchscript" or "safetensors"; a directory's: its weight files'
    state_dict: dict[str, Any]
    entry: Optional[str]  # the entry of the saved dict that held the state dict; None: the whole file
    stripped_prefix: str  # DATA_PARALLEL_PREFIX when every key had it (now removed), else ""


# ------------------------------------------------------------------------------------------ public API


def load_state_dict(path: str, key: Optional[str] = "model") -> dict[str, Any]:
    """The state dict of the checkpoint file or Hugging Face directory at `path` (see the module docstring);
    `key` is the entry of a saved dict to try before "state_dict" and "model"."""
    return read_checkpoint(path, key).state_dict


def read_checkpoint(path: str, key: Optional[str] = "model") -> TorchCheckpoint:
    """`load_state_dict`, with the format, the entry the state dict came from and the prefix stripped."""
    if os.path.isdir(path):
        parts = [_read_file(name, key) for name in _folder_weight_files(path)]
        merged = {k: v for part in parts for k, v in _checked(part.path, part.state_dict).items()}
        return _finish(path, parts[0].format, merged, parts[0].entry)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    checkpoint = _read_file(path, key)
    return _finish(path, checkpoint.format, checkpoint.state_dict, checkpoint.entry)


def checkpoint_format(path: str) -> str:
    """"torch", "torchscript" or "safetensors", read off the file's first bytes (and a zip's names)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: a zip archive that cannot be read (truncated or corrupt)")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.split("/")[1:2] == ["code"] for name in names):  # TorchScript keeps its code in <root>/code/
            return "torchscript"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "torch"
        raise ValueError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl, no code/): expected "
                         f"{_DESCRIPTION}")
    if len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        return "torch"  # the legacy torch.save format: a sequence of pickles
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: an 8-byte little-endian header size, then JSON
        if 8 + int.from_bytes(head[:8], "little") > os.path.getsize(path):
            raise ValueError(f"{path}: a safetensors file whose header runs past its end (truncated or corrupt)")
        return "safetensors"
    what = "the file is empty" if not head else "its first bytes fit none of the formats"
    raise ValueError(f"{path}: not a PyTorch checkpoint ({what}): expected {_DESCRIPTION}")


def select_state_dict(checkpoint: Any, key: Optional[str] = "model") -> Any:
    """The state dict inside a saved checkpoint: its entry `key`, else "state_dict", else "model" (the first
    that is a mapping), else `checkpoint` itself."""
    entry = _state_dict_entry(checkpoint, key)
    return checkpoint if entry is None else checkpoint[entry]


def data_parallel_prefix(state_dict: Mapping[str, Any]) -> str:
    """DATA_PARALLEL_PREFIX when every key carries it (an `nn.DataParallel` / DDP model's state dict), else ""."""
    if state_dict and all(isinstance(k, str) and k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
        return DATA_PARALLEL_PREFIX
    return ""


# ------------------------------------------------------------------------------------------ reading


def _state_dict_entry(checkpoint: Any, key: Optional[str]) -> Optional[str]:
    if not isinstance(checkpoint, Mapping):
        return None
    names = (name for name in (key, *STATE_DICT_ENTRIES) if name)
    return next((name for name in names if isinstance(checkpoint.get(name), Mapping)), None)


def _checked(path: str, state_dict: Any) -> Mapping:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), found "
                         f"{type(state_dict).__name__}")
    if not state_dict:
        raise ValueError(f"{path}: the state dict is empty")
    return state_dict


def _finish(path: str, file_format: str, state_dict: Any, entry: Optional[str]) -> TorchCheckpoint:
    prefix = data_parallel_prefix(_checked(path, state_dict))
    stripped = {k[len(prefix):] if prefix else k: v for k, v in state_dict.items()}
    return TorchCheckpoint(path, file_format, stripped, entry, prefix)


def _read_file(path: str, key: Optional[str]) -> TorchCheckpoint:
    """One weights file, its state dict not yet checked nor stripped."""
    file_format = checkpoint_format(path)
    if file_format == "safetensors":
        return TorchCheckpoint(path, file_format, _read_safetensors(path), None, "")
    torch = _import_torch(path)
    if file_format == "torchscript":
        try:
            with warnings.catch_warnings():  # OpenAI's checkpoints are TorchScript; torch deprecates the format
                warnings.simplefilter("ignore", DeprecationWarning)
                state_dict = dict(torch.jit.load(path, map_location="cpu").state_dict())
        except Exception as error:  # torch raises RuntimeError and others for a damaged archive
            raise ValueError(f"{path}: not a readable TorchScript archive, truncated or corrupt "
                             f"({type(error).__name__}: {error})") from error
        return TorchCheckpoint(path, file_format, state_dict, None, "")
    checkpoint = _torch_load(torch, path, key)
    entry = _state_dict_entry(checkpoint, key)
    return TorchCheckpoint(path, file_format, checkpoint if entry is None else checkpoint[entry], entry, "")


def _import_torch(path: str):
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0 for the CPU build)") from error
    return torch


def _read_safetensors(path: str) -> dict[str, Any]:
    import safetensors

    with open(path, "rb") as f:
        header = f.read(int.from_bytes(f.read(8), "little"))
    try:
        dtypes = {entry["dtype"] for name, entry in json.loads(header).items() if name != "__metadata__"}
        if dtypes & set(_TORCH_ONLY_DTYPES):
            _import_torch(path)
            from safetensors.torch import load_file
        else:
            from safetensors.numpy import load_file
        return load_file(path)
    except (ValueError, KeyError, TypeError, AttributeError, OSError, safetensors.SafetensorError) as error:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt "
                         f"({type(error).__name__}: {error})") from error


def _torch_load(torch, path: str, key: Optional[str]) -> Any:
    try:
        # An open file, not its name: torch.load would read a name ending in .safetensors as safetensors.
        with open(path, "rb") as f, torch.serialization.safe_globals(list(EXTRA_SAFE_TYPES)):
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights-only refusals, but also damaged pickles
        unsafe = _unsafe_globals(torch, path, str(error))
        if not unsafe:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt "
                             f"({error})") from error
        message = _resave_message(path, unsafe, key)
    except Exception as error:  # torch raises RuntimeError, EOFError, ... for damaged files
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt "
                         f"({type(error).__name__}: {error})") from error
    # Raised outside the except clause so that torch's advice (add_safe_globals), no use here, is not chained.
    raise UnsupportedCheckpointError(message)


def _folder_weight_files(path: str) -> list[str]:
    """The weight files of a Hugging Face model directory."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(path, index)):
            with open(os.path.join(path, index)) as f:
                return [os.path.join(path, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    found = sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.bin")))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected one weights file (model.safetensors, pytorch_model.bin), "
                                f"found {[os.path.basename(f) for f in found]}")
    return found


# ------------------------------------------------------------------------ what a refused pickle holds


def _unsafe_globals(torch, path: str, error: str) -> list[str]:
    """The classes / functions in the pickle that weights-only loading refuses, torch's first refusal first."""
    names = re.findall(r"Unsupported global: GLOBAL (\S+) was not an allowed global", error)
    if zipfile.is_zipfile(path):  # torch lists them all for its zip format only
        try:
            with torch.serialization.safe_globals(list(EXTRA_SAFE_TYPES)):
                names += sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (ValueError, RuntimeError, EOFError, KeyError):  # a damaged pickle: torch's first one will do
            pass
    return list(dict.fromkeys(names))


class _Stub:
    """Stands for an object of a pickled class; the analysis imports no class and runs no code of the file."""

    name = ""

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ calls __new__ only, REDUCE the class (no __init__ here)
        stub = super().__new__(cls)
        stub.state, stub.items = None, {}
        return stub

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.items[len(self.items)] = value

    def extend(self, values):
        for value in values:
            self.append(value)


class _StructureUnpickler(pickle.Unpickler):
    """Unpickles the structure only: every global becomes a `_Stub` subclass named after it, storages None."""

    def __init__(self, file):
        super().__init__(file)
        self.stubs: dict[str, type] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        qualified = f"{module}.{name}"
        return self.stubs.setdefault(qualified, type(name, (_Stub,), {"name": qualified}))

    def persistent_load(self, pid):
        # The legacy format refers to a model's class as ("module", class, source file, source); storages -> None.
        return pid[1] if isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module" else None


def _pickled_structure(path: str) -> Any:
    """The saved object with stubs for every class instance (tensors included), read without unpickling."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            return _StructureUnpickler(io.BytesIO(archive.read(name))).load()
    with open(path, "rb") as f:  # legacy format: magic number, protocol version, system info, then the object
        for _ in range(3):
            _StructureUnpickler(f).load()
        return _StructureUnpickler(f).load()


def _is_module(value) -> bool:
    return isinstance(value, _Stub) and isinstance(value.state, dict) and "_parameters" in value.state


def _is_tensor(value) -> bool:
    return isinstance(value, _Stub) and value.name.startswith("torch._utils._rebuild_")


def _children(value, key: Optional[str]) -> list[tuple[str, Any]]:
    """(access expression, child) of a dict's entries (`key` and the state dict entries first), a list's
    items or a stubbed object's attributes."""
    if isinstance(value, dict):
        first = [k for k in (key, *STATE_DICT_ENTRIES) if k in value]
        ordered = list(dict.fromkeys(first + list(value)))
        return [(f"[{json.dumps(k)}]", value[k]) for k in ordered if isinstance(k, (str, int))]
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, _Stub) and isinstance(value.state, dict):
        return [(f".{name}", item) for name, item in value.state.items() if str(name).isidentifier()]
    return []


def _weights_access(root: Any, key: Optional[str]) -> Optional[str]:
    """The expression, after `torch.load(...)`, of the first model's `.state_dict()` or the first mapping of
    names to tensors only, breadth-first; None when there is neither."""
    queue = [("", root)]
    while queue:
        access, value = queue.pop(0)
        if _is_module(value):
            return access + ".state_dict()"
        if isinstance(value, dict) and value and all(_is_tensor(v) for v in value.values()):
            return access
        queue += [(access + step, child) for step, child in _children(value, key)]
    return None


def _resave_message(path: str, unsafe: list[str], key: Optional[str]) -> str:
    try:
        root = _pickled_structure(path)
    except Exception:  # any damage to the pickle: the message then goes without a command
        root = None
    access = None if root is None else _weights_access(root, key)
    if _is_module(root):
        what, types = "the whole model, pickled as torch.save(model, path) writes it", [root.name, *unsafe]
    else:
        what, types = "pickled objects", unsafe
    types = list(dict.fromkeys(types))
    shown = ", ".join(types[:5]) + (f" and {len(types) - 5} more" if len(types) > 5 else "")
    module = types[0].rsplit(".", 1)[0]
    head = (f"{path} holds {what} ({shown}): torch.load(weights_only=True) refuses it, as unpickling it would run "
            f"code, and jaxemo reads weights only.")
    if access is None:
        return (f"{head} No model or state dict was found in it to re-save: where {module} imports, and only if "
                f"you trust the file, load it with torch.load(path, weights_only=False) and save its weights with "
                f"torch.save(model.state_dict(), new_path).")
    target = os.path.splitext(path)[0] + "_state_dict.pt"
    code = (f"import torch; torch.save(torch.load({json.dumps(os.path.abspath(path))}, map_location=\"cpu\", "
            f"weights_only=False){access}, {json.dumps(os.path.abspath(target))})")
    return (f"{head} Re-save its weights once as a state dict, only if you trust the file, where {module} "
            f"imports (e.g. from the root of the code that saved it):\n    python -c {shlex.quote(code)}\n"
            f"then pass {target}.")
