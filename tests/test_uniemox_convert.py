"""u-emo pretraining checkpoints -> UniEmoX params (`jaxemo.convert.uniemox`, `python -m jaxemo.convert uemo`,
`pretrained.uemo`): a tiny student and fusion (the PyTorch twin's, under u-emo's names, saved as u-emo's
`main_pretrain.py` saves `checkpoint.pth`) convert so that jaxemo's UniEmoX computes what torch computes."""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import uniemox as recipe
from jaxemo import vit
from jaxemo.convert import torch_state, uniemox as convert_uniemox
from jaxemo.models import mae, uniemox
from jaxemo.systems.uniemox import pretrain

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from benchmarks.twins import uniemox_torch as twin  # noqa: E402

SIZES = dict(image_size=(32, 32), patch_size=(8, 8), width=32, depth=2, num_heads=2, mlp_dim=64, decoder_width=16,
             decoder_depth=2, decoder_heads=2, decoder_mlp_dim=48)
HEADS = dict(num_heads=2, decoder_heads=2)
BATCH = 3


def run_args(**fields):
    """The run's args as u-emo's main_pretrain.py parses them (the fields the converter reads)."""
    return argparse.Namespace(**{**dict(model="mae_vit_tiny_test", input_size=32, mask_ratio=0.75,
                                        norm_pix_loss=False, use_fusion="easyfusion", channels=16, epochs=800,
                                        use_component=["mae_loss", "similarity_loss", "contrastive_similarity",
                                                       "fusion"]), **fields})


def torch_modules():
    """The twin's student and fusion at SIZES, every weight off its init (LayerNorms included), MAE's fixed
    sin-cos tables in place (transformers 5 leaves them at zero; u-emo's checkpoints hold them)."""
    torch.manual_seed(0)
    student = twin.hf_student(transformers, mae.MAE(**SIZES)).eval()
    fusion = twin.modules().Fusion(SIZES["decoder_width"]).eval()
    with torch.no_grad():
        for module in (student, fusion):
            for name, p in module.named_parameters():
                if "pos_embed" not in name and "position_embeddings" not in name:
                    p.add_(0.1 * torch.randn_like(p))
        student.vit.embeddings.position_embeddings.copy_(torch.from_numpy(vit.sincos_pos_embed_2d(32, (4, 4))))
        student.decoder.decoder_pos_embed.copy_(torch.from_numpy(vit.sincos_pos_embed_2d(16, (4, 4))))
    return student, fusion


@pytest.fixture(scope="module")
def uemo(tmp_path_factory):
    """The torch modules, their u-emo checkpoint.pth (plain and as a distributed run saves it), the inputs and
    torch's outputs on them."""
    student, fusion = torch_modules()
    folder = tmp_path_factory.mktemp("uemo")
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(fusion.parameters()), lr=1e-3)
    files = {}
    for distributed in (False, True):
        files[distributed] = str(folder / f"checkpoint_{'ddp' if distributed else 'single'}.pth")
        torch.save(twin.uemo_checkpoint(torch, student, fusion, run_args(), 3, optimizer, distributed),
                   files[distributed])
    rng = np.random.default_rng(0)
    scene, person = (rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32) for _ in range(2))
    scene_noise, person_noise = (rng.uniform(size=(BATCH, 16)).astype(np.float32) for _ in range(2))

    def pixels(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2)

    with torch.no_grad():
        encoded = student.vit(pixel_values=pixels(scene), noise=torch.from_numpy(scene_noise))
        pred = student.decoder(encoded.last_hidden_state, encoded.ids_restore).logits
        target = student.patchify(pixels(scene))
        reconstruction = ((((pred - target) ** 2).mean(-1) * encoded.mask).sum() / encoded.mask.sum())
        alpha = student.decoder.decoder_embed(encoded.last_hidden_state[:, 0])
        person_latent = student.vit(pixel_values=pixels(person), noise=torch.from_numpy(person_noise))
        beta = student.decoder.decoder_embed(person_latent.last_hidden_state[:, 0])
        fused = fusion(alpha, beta)
    outputs = {"fused": fused, "scene_feature": alpha, "person_feature": beta, "pred": pred}
    return dict(student=student, fusion=fusion, files=files, inputs=(scene, person, scene_noise, person_noise),
                torch={k: v.numpy() for k, v in outputs.items()}, reconstruction=float(reconstruction))


def saved_dict(uemo) -> dict:
    """The dict checkpoint.pth holds, numpy values (for the error cases, which need no file)."""
    saved = twin.uemo_checkpoint(torch, uemo["student"], uemo["fusion"], run_args(), 3)
    return {k: ({n: t.numpy() for n, t in v.items()} if k in ("model", "att_fusion") else v)
            for k, v in saved.items()}


MODEL = uniemox.UniEmoX(student=mae.MAE(**SIZES), fusion="easyfusion")
_apply = jax.jit(lambda p, scene, person, scene_noise, person_noise: MODEL.apply(
    {"params": p}, scene, person, scene_noise=scene_noise, person_noise=person_noise))


def run_jaxemo(params, inputs):
    """UniEmoX's (reconstruction loss, aux) on (scene, person, scene noise, person noise); one compilation."""
    return _apply(params, *inputs)


@pytest.mark.parametrize("distributed", [False, True])
def test_a_uemo_checkpoint_converts_to_what_torch_computes(uemo, distributed):
    converted = convert_uniemox.load(uemo["files"][distributed], **HEADS)
    assert set(converted.params) == {"student", "fuse"}
    assert converted.epoch == 3 and converted.not_converted == ["args", "epoch", "optimizer"]
    assert converted.checked == ["model/pos_embed", "model/decoder_pos_embed"]
    assert converted.args["model"] == "mae_vit_tiny_test" and converted.heads == (2, 2)
    reconstruction, aux = run_jaxemo(converted.params, uemo["inputs"])
    for name, expected in uemo["torch"].items():  # the fused embedding, both CLS features, the decoder's output
        np.testing.assert_allclose(np.asarray(aux[name]), expected, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(reconstruction), uemo["reconstruction"], rtol=1e-5)


def test_the_fusion_weights_are_the_ones_the_model_reads(uemo):
    """The fused embedding follows the converted `att_fusion` weights: the model's own init of the fusion (or
    the LayerNorm's weights swapped with defaults) gives another vector."""
    converted = convert_uniemox.load(uemo["files"][False], **HEADS)
    fuse = converted.params["fuse"]
    np.testing.assert_array_equal(fuse["proj"]["kernel"], uemo["fusion"].proj.weight.detach().numpy().T)
    np.testing.assert_array_equal(fuse["norm"]["scale"], uemo["fusion"].norm.weight.detach().numpy())
    features = np.ones((1, 16), np.float32)
    init = nn.unbox(uniemox.Fusion(16).init(jax.random.key(0), features, features))["params"]
    for other in (init, {**fuse, "norm": {"scale": np.ones(16, np.float32), "bias": np.zeros(16, np.float32)}}):
        _, aux = run_jaxemo({**converted.params, "fuse": other}, uemo["inputs"])
        assert np.abs(np.asarray(aux["fused"]) - uemo["torch"]["fused"]).max() > 1e-2
        np.testing.assert_allclose(np.asarray(aux["scene_feature"]), uemo["torch"]["scene_feature"], atol=1e-5)


def test_missing_wrong_and_unknown_keys_are_errors_naming_the_key(uemo):
    saved = saved_dict(uemo)
    cases = [
        ("model", "drop", "decoder_blocks.1.mlp.fc1.weight", r"no key 'decoder_blocks\.1\.mlp\.fc1\.weight'"),
        ("model", "drop", "decoder_pred.bias", r"no key 'decoder_pred\.bias'"),
        ("model", np.zeros((16, 31), np.float32), "decoder_embed.weight",
         r"'decoder_embed\.weight' has shape \(16, 31\), expected \('\*', 32\)"),
        ("model", np.zeros((10, 32), np.float32), "head.weight", r"keys u-emo's MaskedAutoencoderViT does not: "
                                                                 r"\['head\.weight'\]"),
        ("att_fusion", "drop", "bn.bias", r"no key 'bn\.bias'"),
        ("att_fusion", np.zeros((16, 8), np.float32), "linear.weight", r"'linear\.weight' has shape \(16, 8\)"),
        ("att_fusion", np.zeros(3, np.float32), "extra", r"keys u-emo's AttentionFusion does not: \['extra'\]"),
    ]
    for entry, value, key, message in cases:
        part = {k: v for k, v in saved[entry].items() if k != key}
        if not isinstance(value, str):
            part[key] = value
        with pytest.raises(ValueError, match=message):
            convert_uniemox.from_uemo({**saved, entry: part}, **HEADS)
    with pytest.raises(ValueError, match=r"not a u-emo checkpoint: expected a dict with a 'model' state dict"):
        convert_uniemox.from_uemo(saved["model"], **HEADS)  # a bare state dict
    learned = dict(saved["model"], pos_embed=saved["model"]["pos_embed"] + 0.5)
    with pytest.raises(ValueError, match="pos_embed: not MAE's fixed 2-D sin-cos table"):
        convert_uniemox.from_uemo({**saved, "model": learned}, **HEADS)


def test_files_torch_would_unpickle_with_code_are_refused(tmp_path):
    path = str(tmp_path / "pickled.pth")
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    refused = r"torch.load\(weights_only=True\) refuses it"
    with pytest.raises(torch_state.UnsupportedCheckpointError, match=refused):
        convert_uniemox.load(path, **HEADS)
    with pytest.raises(FileNotFoundError):
        convert_uniemox.load(str(tmp_path / "absent.pth"), **HEADS)


def test_other_fusions_and_a_checkpoint_without_the_fusion(uemo):
    saved = saved_dict(uemo)
    with pytest.raises(ValueError, match=r"--use_fusion='mlp_attention_glu' \(MLPMultiHeadAttentionGLU\)"):
        convert_uniemox.from_uemo({**saved, "args": run_args(use_fusion="mlp_attention_glu")}, **HEADS)
    heads = {f"W_{s}.{i}.{leaf}": np.zeros((1, 16) if leaf == "weight" else (1,), np.float32)
             for s in "ab" for i in range(3) for leaf in ("weight", "bias")}
    other = {**saved, "args": None, "att_fusion": {**heads, "bias": np.zeros((1, 16), np.float32)}}
    with pytest.raises(ValueError, match="'att_fusion' holds MultiHeadAttentionFusion"):
        convert_uniemox.from_uemo(other, **HEADS)
    # misc.save_model's checkpoint-<epoch>.pth: the student only
    student_only = {"model": saved["model"], "optimizer": {}, "epoch": 99, "scaler": {}, "args": run_args()}
    with pytest.raises(ValueError, match=r"no 'att_fusion' entry .* --allow_missing_fusion"):
        convert_uniemox.from_uemo(student_only, **HEADS)
    converted = convert_uniemox.from_uemo(student_only, require_fusion=False, **HEADS)
    assert set(converted.params) == {"student"} and converted.not_converted == ["args", "epoch", "optimizer",
                                                                                  "scaler"]
    assert "the fusion starts from its initialisation" in converted.notes[0]
    no_fusion = run_args(use_component=["mae_loss", "similarity_loss"])
    ablation = convert_uniemox.from_uemo({**saved, "args": no_fusion}, **HEADS)
    assert any("--config.model.fusion=none" in note for note in ablation.notes)


def test_head_counts_follow_the_saved_model_name_or_must_be_given(uemo):
    assert convert_uniemox.heads_for("mae_vit_large_patch16") == (16, 16)
    assert convert_uniemox.heads_for("mae_vit_base_patch16_dec512d8b") == (12, 16)
    saved = saved_dict(uemo)
    with pytest.raises(ValueError, match=r"no encoder head count: args.model='mae_vit_tiny_test'.* width 32"):
        convert_uniemox.from_uemo(saved)
    with pytest.raises(ValueError, match="not divisible by num_heads=12"):  # base's heads at width 32
        convert_uniemox.from_uemo({**saved, "args": run_args(model="mae_vit_base_patch16")})


def test_the_command_and_pretrained_uemo_start_the_pretraining_run(uemo, tmp_path, capsys):
    """`python -m jaxemo.convert uemo`, then `pretrained.uemo`: the student, its decoder and the fusion of the
    pretraining params are u-emo's (and compute torch's fused embedding); the teacher is the CLIP one."""
    from jaxemo.convert import __main__ as convert_command

    out = str(tmp_path / "uemo_start")
    convert_command.main(["uemo", uemo["files"][True], out, "--num_heads=2", "--decoder_heads=2"])
    printed = capsys.readouterr().out
    assert "uemo: fuse and student" in printed and "not converted: args, epoch, optimizer" in printed
    assert f"--config.pretrained.uemo={out}" in printed
    converted = convert_uniemox.load(uemo["files"][False], **HEADS)

    config = recipe.get_config("tiny")
    config.model.update(image_size=32, width=32, depth=2, num_heads=2, mlp_dim=64, decoder_width=16,
                        decoder_depth=2, decoder_heads=2, decoder_mlp_dim=48)
    config.teacher.update(vision_width=32, vision_depth=1, vision_heads=2, vision_mlp_dim=64, embed_dim=16,
                          text_width=16, text_depth=1, text_heads=2, text_mlp_dim=32, vocab_size=64,
                          eot_token_id=2)
    x = jnp.zeros((1, 32, 32, 3))

    def template(config):
        model = pretrain.build_pretrainer(config)
        rngs = {"params": jax.random.key(0), "masking": jax.random.key(1), "dropout": jax.random.key(2)}
        shapes = nn.unbox(jax.eval_shape(lambda: model.init(rngs, x, x, x)))["params"]
        return jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)

    start = template(config)
    clip_params = {**jax.tree.map(lambda a: a + 1.0, start["teacher"]), "text": {"unused": np.zeros(2)}}
    config.pretrained.uemo = out
    params = pretrain.init_params(config, clip_params)(start)
    for part in ("student", "fuse"):
        for a, b in zip(jax.tree.leaves(params["uniemox"][part]), jax.tree.leaves(converted.params[part])):
            np.testing.assert_array_equal(np.asarray(a), b)
    assert set(params["teacher"]) == {"visual", "visual_projection", "logit_scale"}
    np.testing.assert_array_equal(params["teacher"]["logit_scale"], start["teacher"]["logit_scale"] + 1.0)
    _, aux = run_jaxemo(params["uniemox"], uemo["inputs"])
    np.testing.assert_allclose(np.asarray(aux["fused"]), uemo["torch"]["fused"], atol=1e-5)

    config.pretrained.mae = out
    with pytest.raises(ValueError, match="give one start"):
        pretrain.init_params(config, clip_params)
    config.pretrained.mae = ""
    config.model.fusion = "none"  # u-emo's ablation without the fusion: its weights are not taken
    params = pretrain.init_params(config, clip_params)(template(config))
    assert set(params["uniemox"]) == {"student"}
    with pytest.raises(ValueError, match="not a converted u-emo checkpoint"):  # e.g. an MAE checkpoint's parts
        pretrain.uemo_start({"encoder": {}, "decoder": {}}, "easyfusion", "ckpt/mae")
