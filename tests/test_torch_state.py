"""`jaxemo.convert.torch_state`, the one PyTorch checkpoint loader: every file kind (torch.save zip and legacy,
safetensors, TorchScript, Hugging Face directories), DataParallel prefixes, saved dicts carrying
`argparse.Namespace`, refused pickles (the message and its re-save command, run), missing and damaged files;
and, per converter kind, that a prefixed and a Namespace-carrying checkpoint convert to the plain one's params."""

import argparse
import importlib
import json
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxemo.convert import torch_state  # noqa: E402
from jaxemo.convert.torch_state import UnsupportedCheckpointError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
FILE_KINDS = {"pth": "torch", "legacy_bin": "torch", "safetensors": "safetensors", "torchscript": "torchscript"}
PICKLE_KINDS = ("pth", "legacy_bin")
SUFFIX = {"pth": ".pth", "legacy_bin": ".bin", "safetensors": ".safetensors", "torchscript": ".pt"}


def tiny_state(seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"encoder.weight": (3, 2), "encoder.bias": (3,), "head.weight": (1, 3)}
    return {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}


def prefixed(state: dict, prefix: str = "module.") -> dict:
    return {prefix + k: v for k, v in state.items()}


def scripted(state: dict):
    """A TorchScript module whose state dict is `state` (parameters at the dotted paths of its keys)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if name not in module._modules:
                module.add_module(name, torch.nn.Module())
            module = module._modules[name]
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    return torch.jit.script(root)


def write(kind: str, content, path) -> str:
    path = str(path)
    if kind == "pth":
        torch.save(content, path)
    elif kind == "legacy_bin":
        torch.save(content, path, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file(content, path)
    else:
        torch.jit.save(scripted(content), path)
    return path


def assert_same_state(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(got[key]), value.numpy(), err_msg=key)


# ------------------------------------------------------------------------------------------- file kinds


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_plain_and_data_parallel_state_dicts_load(kind, tmp_path):
    state = tiny_state()
    plain = torch_state.read_checkpoint(write(kind, state, tmp_path / f"plain{SUFFIX[kind]}"))
    assert (plain.format, plain.entry, plain.stripped_prefix) == (FILE_KINDS[kind], None, "")
    assert_same_state(plain.state_dict, state)
    parallel = torch_state.read_checkpoint(write(kind, prefixed(state), tmp_path / f"parallel{SUFFIX[kind]}"))
    assert parallel.stripped_prefix == "module."
    assert_same_state(parallel.state_dict, state)
    partly = {**prefixed(state), "extra": torch.zeros(1)}  # not every key has it: kept as it is
    assert_same_state(torch_state.load_state_dict(write(kind, partly, tmp_path / f"partly{SUFFIX[kind]}")), partly)


@pytest.mark.parametrize("kind", PICKLE_KINDS)
def test_saved_dicts_with_namespace_and_plain_entries_load(kind, tmp_path):
    state, other = tiny_state(0), tiny_state(1)
    saved = {"model": prefixed(state), "epoch": 3, "args": argparse.Namespace(lr=0.1, name="mae"),
             "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]},
             "scaler": None, "history": (1.5, [2, "x"])}  # what MAE's and UniEmoX's save_model write, and more
    checkpoint = torch_state.read_checkpoint(write(kind, saved, tmp_path / f"mae{SUFFIX[kind]}"))
    assert (checkpoint.entry, checkpoint.stripped_prefix) == ("model", "module.")
    assert_same_state(checkpoint.state_dict, state)
    both = write(kind, {"state_dict": state, "model": other, "epoch": 1}, tmp_path / f"both{SUFFIX[kind]}")
    assert_same_state(torch_state.load_state_dict(both), other)  # `key` ("model" by default) first
    assert_same_state(torch_state.load_state_dict(both, key="state_dict"), state)
    assert_same_state(torch_state.load_state_dict(both, key=None), state)  # then "state_dict", then "model"


def test_the_content_decides_the_kind_not_the_name(tmp_path):
    state = tiny_state()
    names = (("safetensors", "weights.pth"), ("pth", "weights.safetensors"), ("torchscript", "model.bin"),
             ("legacy_bin", "weights.pt"))
    for kind, name in names:
        checkpoint = torch_state.read_checkpoint(write(kind, state, tmp_path / name))
        assert checkpoint.format == FILE_KINDS[kind], name
        assert_same_state(checkpoint.state_dict, state)


def test_safetensors_give_numpy_arrays_and_bfloat16_gives_tensors(tmp_path):
    state = tiny_state()
    loaded = torch_state.load_state_dict(write("safetensors", state, tmp_path / "f32.safetensors"))
    assert all(isinstance(v, np.ndarray) for v in loaded.values())
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}
    loaded = torch_state.load_state_dict(write("safetensors", half, tmp_path / "bf16.safetensors"))
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 for v in loaded.values())


def test_hugging_face_directories(tmp_path):
    from safetensors.torch import save_file

    state = tiny_state()
    (tmp_path / "single").mkdir()
    save_file(prefixed(state), str(tmp_path / "single" / "model.safetensors"))
    (tmp_path / "single" / "config.json").write_text("{}")
    checkpoint = torch_state.read_checkpoint(str(tmp_path / "single"))
    assert (checkpoint.format, checkpoint.stripped_prefix) == ("safetensors", "module.")
    assert_same_state(checkpoint.state_dict, state)

    (tmp_path / "sharded").mkdir()
    shards = {"pytorch_model-00001-of-00002.bin": ["encoder.weight", "encoder.bias"],
              "pytorch_model-00002-of-00002.bin": ["head.weight"]}
    for name, keys in shards.items():
        torch.save({k: state[k] for k in keys}, str(tmp_path / "sharded" / name))
    index = {"weight_map": {k: name for name, keys in shards.items() for k in keys}}
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_same_state(torch_state.load_state_dict(str(tmp_path / "sharded")), state)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: expected one weights file"):
        torch_state.load_state_dict(str(tmp_path / "empty"))


def test_missing_damaged_and_foreign_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: no such checkpoint file"):
        torch_state.load_state_dict(str(tmp_path / "nope.pth"))
    state = {"w": torch.randn(64, 64)}
    files = {}
    for kind in FILE_KINDS:
        whole = open(write(kind, state, tmp_path / f"whole{SUFFIX[kind]}"), "rb").read()
        files[f"truncated{SUFFIX[kind]}"] = whole[: len(whole) // 2]
    files["noise.pth"] = b"this is not a checkpoint at all"
    files["empty.bin"] = b""
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=str(tmp_path / name)) as error:
            torch_state.load_state_dict(str(tmp_path / name))
        assert not isinstance(error.value, UnsupportedCheckpointError), name
    torch.save([torch.zeros(1)], str(tmp_path / "list.pth"))
    with pytest.raises(ValueError, match=r"list\.pth: expected a state dict .* found list"):
        torch_state.load_state_dict(str(tmp_path / "list.pth"))


# ------------------------------------------------------------------------------------ refused pickles


@pytest.fixture(scope="module")
def tinynet(tmp_path_factory):
    """An importable module with a model class and a plain custom class, as a training repository has."""
    folder = tmp_path_factory.mktemp("repository")
    (folder / "tinynet.py").write_text(
        "import torch\n\n\nclass TinyNet(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.encoder = torch.nn.Linear(2, 3)\n        self.head = torch.nn.Linear(3, 1)\n\n\n"
        "class RunInfo:\n    def __init__(self, note):\n        self.note = note\n")
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("tinynet"), folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tinynet", None)


def refused(tinynet, case: str):
    """(saved object, a type the message must name, the state dict the re-saved file must hold)."""
    module, _ = tinynet
    torch.manual_seed(0)
    model, state = module.TinyNet(), tiny_state()
    return {
        "whole_model": (model, "tinynet.TinyNet", model.state_dict()),
        "model_in_a_dict": ({"model": model, "epoch": 3}, "tinynet.TinyNet", model.state_dict()),
        "custom_object_beside_weights": ({"state_dict": state, "run": module.RunInfo("best")}, "tinynet.RunInfo",
                                         state),
        "numpy_array_beside_weights": ({"state_dict": state, "best": np.array([0.5, 0.25])}, "numpy", state),
    }[case]


@pytest.mark.parametrize("kind", PICKLE_KINDS)
@pytest.mark.parametrize("case", ["whole_model", "model_in_a_dict", "custom_object_beside_weights",
                                  "numpy_array_beside_weights"])
def test_refused_pickles_name_the_file_the_type_and_a_resave_command_that_works(tinynet, case, kind, tmp_path):
    saved, type_name, expected = refused(tinynet, case)
    path = write(kind, saved, tmp_path / f"{case}{SUFFIX[kind]}")
    with pytest.raises(UnsupportedCheckpointError) as error:
        torch_state.load_state_dict(path)
    message = str(error.value)
    assert message.startswith(path) and type_name in message and "add_safe_globals" not in message
    assert ("whole model" in message) == (case == "whole_model")
    command = next(line.strip() for line in message.splitlines() if line.strip().startswith("python -c "))
    program, flag, code = shlex.split(command)  # one POSIX shell word per argument: the quoting holds
    assert (program, flag) == ("python", "-c") and "weights_only=False" in code
    resaved = tmp_path / f"{case}_state_dict.pt"
    assert message.endswith(f"then pass {resaved}.")
    if case == "whole_model" and kind == "pth":  # as the user runs it: a fresh interpreter in the repository
        subprocess.run([sys.executable, "-c", code], cwd=tinynet[1], check=True)
    else:  # the same program in this interpreter (where tinynet imports), sparing a torch start-up per case
        exec(compile(code, "<re-save command>", "exec"), {})
    assert_same_state(torch_state.load_state_dict(str(resaved)), expected)


def test_a_refused_pickle_without_weights_says_so(tinynet, tmp_path):
    module, _ = tinynet
    path = write("pth", {"run": module.RunInfo("best"), "weights": [np.zeros(2)]}, tmp_path / "odd.pth")
    with pytest.raises(UnsupportedCheckpointError, match=r"odd\.pth holds pickled objects .*tinynet\.RunInfo.*"
                                                         r"No model or state dict was found"):
        torch_state.load_state_dict(path)


# --------------------------------------------------------------------------------- per converter kind


def transformers_state(name: str) -> dict:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "vit":
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_size=16, patch_size=8)
        return transformers.ViTModel(config, add_pooling_layer=False).state_dict()
    if name == "mae":
        from jaxemo import vit

        config = transformers.ViTMAEConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
            patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32)
        model = transformers.ViTMAEForPreTraining(config)
        with torch.no_grad():  # MAE's fixed tables (transformers 5 leaves them zero in a fresh model)
            model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(vit.sincos_pos_embed_2d(32, (2, 2))))
            model.decoder.decoder_pos_embed.copy_(torch.from_numpy(vit.sincos_pos_embed_2d(16, (2, 2))))
        return model.state_dict()
    text = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4, max_position_embeddings=16, projection_dim=24)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=16, patch_size=8, projection_dim=24)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)
    return transformers.CLIPModel(config).state_dict()


def as_torch(state: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def timm_mae_state() -> dict:
    """The official MAE names (fused qkv, decoder_*), through jaxemo's converters and timm exporter."""
    from jaxemo import vit
    from jaxemo.convert import mae as convert_mae
    from jaxemo.convert.vit import to_timm_vit

    params = convert_mae.from_hf_mae(transformers_state("mae"), num_heads=2, decoder_heads=2)
    state = to_timm_vit({**params["encoder"], "pos_embed": vit.sincos_pos_embed_2d(32, (2, 2))})
    decoder = to_timm_vit({"cls_token": np.zeros((1, 1, 16)), "pos_embed": np.zeros((1, 5, 16)),
                           "patch_embed": {"kernel": np.zeros((1, 1, 1, 16)), "bias": np.zeros(16)},
                           "encoder": params["decoder"], "norm": params["decoder_norm"]})
    state.update({"decoder_" + k: v for k, v in decoder.items() if k.startswith(("blocks.", "norm."))})
    for name in ("decoder_embed", "decoder_pred"):
        state[f"{name}.weight"], state[f"{name}.bias"] = params[name]["kernel"].T, params[name]["bias"]
    state["mask_token"], state["decoder_pos_embed"] = params["mask_token"], vit.sincos_pos_embed_2d(16, (2, 2))
    return as_torch(state)


def timm_vit_state() -> dict:
    from jaxemo.convert.vit import from_hf_vit, to_timm_vit

    return as_torch(to_timm_vit(from_hf_vit(transformers_state("vit"), depth=2, num_heads=2)))


def openai_clip_state() -> dict:
    """OpenAI's CLIP names (as its TorchScript archives hold them), random weights of a tiny ViT CLIP."""
    width, embed, patch, tokens = 32, 24, 8, 5

    def tower(prefix):  # one residual block
        at = f"{prefix}transformer.resblocks.0."
        shapes = {at + "attn.in_proj_weight": (3 * width, width), at + "attn.in_proj_bias": (3 * width,),
                  at + "attn.out_proj.weight": (width, width), at + "mlp.c_fc.weight": (4 * width, width),
                  at + "mlp.c_fc.bias": (4 * width,), at + "mlp.c_proj.weight": (width, 4 * width)}
        for name in ("attn.out_proj.bias", "mlp.c_proj.bias", "ln_1.weight", "ln_1.bias", "ln_2.weight",
                     "ln_2.bias"):
            shapes[at + name] = (width,)
        return shapes

    shapes = {"visual.class_embedding": (width,), "visual.positional_embedding": (tokens, width),
              "visual.conv1.weight": (width, 3, patch, patch), "visual.proj": (width, embed),
              "token_embedding.weight": (99, width), "positional_embedding": (16, width),
              "text_projection": (width, embed), "logit_scale": (), **tower("visual."), **tower("")}
    for norm in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        shapes[norm + ".weight"] = shapes[norm + ".bias"] = (width,)
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}


def mma_dfer_state() -> dict:
    from benchmarks.twins import mma_dfer_torch

    sizes = mma_dfer_torch.Sizes(num_frames=2, image_size=16, audio_shape=(16, 16), patch_size=8, width=16,
                                 depth=2, num_heads=2, mlp_dim=32, num_prompts=2, prompt_groups=1, prompt_stride=2,
                                 latent_dim=8, temporal_width=16, temporal_depth=1, temporal_heads=2,
                                 temporal_mlp_dim=32, num_classes=3)
    torch.manual_seed(0)
    return as_torch(mma_dfer_torch.to_state_dict(mma_dfer_torch.build(sizes, attn_implementation="timm")))


def casp_state() -> dict:
    from benchmarks.twins import casp_torch

    torch.manual_seed(0)
    return casp_torch.build("late", (12, 5, 20), proj_dim=16, heads=4, depth=1).state_dict()


def mertools_state() -> dict:
    from benchmarks.twins import mertools_attention_torch

    torch.manual_seed(0)
    return mertools_attention_torch.build_mertools(6, 8, 4, hidden_dim=8, feat_type="frm_align").state_dict()


def speech_state(kind: str, folder) -> dict:
    """A tiny transformers wav2vec2 / HuBERT's state dict; its config.json is written into `folder`."""
    transformers = pytest.importorskip("transformers")
    cls = {"wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
           "hubert": (transformers.HubertConfig, transformers.HubertModel)}[kind]
    config = cls[0](hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    model = cls[1](config)
    config.to_json_file(str(folder / "config.json"))
    return model.state_dict()


CONVERTERS = {  # kind: (state dict builder, CLI flags)
    "vit_hf": (lambda: transformers_state("vit"), ["--num_heads=2"]),
    "vit_timm": (timm_vit_state, ["--num_heads=2"]),
    "mae": (timm_mae_state, ["--num_heads=2", "--decoder_heads=2"]),
    "mae_hf": (lambda: transformers_state("mae"), ["--num_heads=2", "--decoder_heads=2"]),
    "clip": (openai_clip_state, ["--num_heads=2", "--text_heads=4"]),
    "clip_hf": (lambda: transformers_state("clip"), ["--num_heads=2", "--text_heads=4"]),
    "mma_dfer": (mma_dfer_state, ["--num_heads=2", "--temporal_heads=2"]),
    "mertools": (mertools_state, ["--features=a=audio,v=video,t=text"]),
}


def variants(state: dict) -> dict:
    return {"plain": state, "data_parallel": prefixed(state),
            "namespace": {"model": state, "epoch": 3, "args": argparse.Namespace(lr=0.1, model="tiny")}}


def assert_same_params(got, expected, what):
    assert jax.tree.structure(got) == jax.tree.structure(expected), what
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


def test_the_command_line_offers_the_kinds_tested_here():
    from jaxemo.convert import __main__ as convert_command

    # uemo reads a whole u-emo checkpoint (`model` and `att_fusion` beside `args`), not one state dict: its
    # plain, DDP-prefixed and Namespace-carrying files are tests/test_uniemox_convert.py's
    assert set(convert_command.KINDS) == set(CONVERTERS) | {"wav2vec2", "hubert", "uemo"}


@pytest.mark.parametrize("kind", [*CONVERTERS, "wav2vec2", "hubert"])
def test_every_command_line_kind_reads_data_parallel_and_namespace_checkpoints(kind, tmp_path):
    from jaxemo.convert import __main__ as convert_command

    converted = {}
    if kind in CONVERTERS:
        build, flags = CONVERTERS[kind]
        for variant, content in variants(build()).items():
            path = write("pth", content, tmp_path / f"{variant}.pth")
            converted[variant] = convert_command.main([kind, path, str(tmp_path / f"out_{variant}"), *flags])
    else:  # a Hugging Face directory: config.json and pytorch_model.bin
        config = tmp_path / "config"
        config.mkdir()
        state = speech_state(kind, config)
        for variant, content in variants(state).items():
            folder = tmp_path / variant
            folder.mkdir()
            (folder / "config.json").write_text((config / "config.json").read_text())
            write("pth", content, folder / "pytorch_model.bin")
            converted[variant] = convert_command.main([kind, str(folder), str(tmp_path / f"out_{variant}")])
    for variant in ("data_parallel", "namespace"):
        assert_same_params(converted[variant], converted["plain"], f"{kind}: {variant}")


def test_casp_reads_data_parallel_and_namespace_checkpoints(tmp_path):
    from jaxemo.convert import casp

    converted = {}
    for variant, content in variants(casp_state()).items():
        path = write("pth", content, tmp_path / f"{variant}.pt")
        params, fusion, info = casp.load_reference_checkpoint(path, num_heads=4)
        assert fusion == "late" and info["prefix"] == ("module." if variant == "data_parallel" else "")
        converted[variant] = params
    for variant in ("data_parallel", "namespace"):
        assert_same_params(converted[variant], converted["plain"], f"casp: {variant}")
