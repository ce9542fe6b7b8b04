"""jaxemo's CLIP against transformers' `CLIPModel` (random weights, same inputs): every hidden state of both
towers, the embeddings and the logits; and the converter's errors."""

import jax
import numpy as np
import pytest

from jaxemo.convert import clip as convert_clip
from jaxemo.models import clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

EOT = 98
SIZES = dict(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2, vision_mlp_dim=64,
             embed_dim=24, vocab_size=99, context_length=16, text_width=32, text_depth=2, text_heads=4,
             text_mlp_dim=48, eot_token_id=EOT)


@pytest.fixture(scope="module")
def hf_model():
    text = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=16, projection_dim=24,
                                       eos_token_id=EOT, bos_token_id=0, pad_token_id=0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=24)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(1, EOT, (3, 16))
    for row, end in enumerate((5, 15, 9)):  # the end-of-text token, then padding (zeros)
        ids[row, end] = EOT
        ids[row, end + 1:] = 0
    return images, ids.astype(np.int32)


def test_clip_matches_transformers_clipmodel(hf_model, inputs):
    images, ids = inputs
    params = convert_clip.from_hf_clip(hf_model.state_dict(), vision_heads=2, text_heads=4)
    model = clip.CLIP(**SIZES)
    variables = {"params": params}
    image_embeds, image_aux = model.apply(variables, images, True, method=clip.CLIP.encode_image)
    text_embeds, text_hidden = model.apply(variables, ids, True, method=clip.CLIP.encode_text)
    logits, aux = model.apply(variables, images, ids)
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                       output_hidden_states=True)
        hf_image = hf_model.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
        hf_text = hf_model.get_text_features(input_ids=torch.from_numpy(ids).long())
        hf_image, hf_text = (getattr(x, "pooler_output", x).numpy() for x in (hf_image, hf_text))
    for i in range(2):  # every block's output, both towers
        np.testing.assert_allclose(image_aux["hidden_states"][i], out.vision_model_output.hidden_states[i + 1].numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(text_hidden[i], out.text_model_output.hidden_states[i + 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(image_aux["embeddings"], out.vision_model_output.hidden_states[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(image_embeds, hf_image, atol=1e-5)
    np.testing.assert_allclose(text_embeds, hf_text, atol=1e-5)
    np.testing.assert_allclose(aux["image_embeds"], out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(aux["text_embeds"], out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits, out.logits_per_image.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(aux["logits_per_text"], out.logits_per_text.numpy(), rtol=1e-5, atol=1e-4)


def test_legacy_pooling_takes_the_largest_id(inputs):
    _, ids = inputs
    model = clip.TextTransformer(vocab_size=99, context_length=16, width=16, depth=1, num_heads=2, mlp_dim=32,
                                 eot_token_id=EOT)
    variables = model.init(jax.random.key(0), ids)
    first_eot, _ = model.apply(variables, ids)
    legacy, _ = model.clone(eot_token_id=None).apply(variables, ids)  # EOT is the largest id in every row
    np.testing.assert_allclose(legacy, first_eot)
    with pytest.raises(ValueError, match=r"token_ids must be \[batch, <= 16\]"):
        model.apply(variables, np.zeros((2, 17), np.int32))


def test_converter_names_missing_and_unexpected_keys(hf_model):
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    missing = {k: v for k, v in state.items() if k != "text_model.final_layer_norm.bias"}
    with pytest.raises(ValueError, match=r"no key 'text_model\.final_layer_norm\.bias'"):
        convert_clip.from_hf_clip(missing, vision_heads=2, text_heads=4)
    extra = dict(state, **{"text_model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys .*text_model\.extra\.weight"):
        convert_clip.from_hf_clip(extra, vision_heads=2, text_heads=4)
    wrong = dict(state, **{"visual_projection.weight": np.zeros((24, 31), np.float32)})
    with pytest.raises(ValueError, match=r"'visual_projection\.weight' has shape \(24, 31\), expected \('\*', 32\)"):
        convert_clip.from_hf_clip(wrong, vision_heads=2, text_heads=4)


def test_convert_command_reads_a_clipmodel_safetensors_file(hf_model, tmp_path):
    from safetensors.torch import save_file

    from jaxemo.convert import __main__ as convert_command
    from jaxemo.train import checkpoint

    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in hf_model.state_dict().items()}, path)
    convert_command.main(["clip_hf", path, str(tmp_path / "clip"), "--num_heads=2", "--text_heads=4"])
    loaded = checkpoint.load_params(str(tmp_path / "clip"))
    expected = convert_clip.from_hf_clip(hf_model.state_dict(), vision_heads=2, text_heads=4)
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def openai_named(hf_state) -> dict:
    """The same weights under OpenAI's CLIP names (fused in_proj), as its TorchScript archives hold them."""
    s = {k: v.numpy() for k, v in hf_state.items()}
    out = {"visual.class_embedding": s["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": s["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": s["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": s["visual_projection.weight"].T, "text_projection": s["text_projection.weight"].T,
           "token_embedding.weight": s["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": s["text_model.embeddings.position_embedding.weight"],
           "logit_scale": s["logit_scale"], "input_resolution": np.array(32), "context_length": np.array(16),
           "vocab_size": np.array(99), "attn_mask": np.zeros((16, 16), np.float32)}
    for theirs, ours in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                         ("text_model.final_layer_norm", "ln_final")):
        out[ours + ".weight"], out[ours + ".bias"] = s[theirs + ".weight"], s[theirs + ".bias"]
    for tower, prefix in (("vision_model", "visual."), ("text_model", "")):
        for i in range(2):
            a, b = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for part in ("weight", "bias"):
                out[b + f"attn.in_proj_{part}"] = np.concatenate([s[a + f"self_attn.{p}_proj.{part}"] for p in "qkv"])
                for theirs, ours in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                     ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    out[b + f"{ours}.{part}"] = s[a + f"{theirs}.{part}"]
    return out


def torchscript_archive(state: dict, path: str) -> None:
    """A TorchScript archive whose state dict is `state` (as OpenAI's `ViT-B-16.pt`)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_parameter(leaf, torch.nn.Parameter(torch.from_numpy(np.asarray(value)).float(),
                                                           requires_grad=False))
    torch.jit.save(torch.jit.script(root), path)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_openai_naming_and_torchscript_archives(hf_model, tmp_path):
    from jaxemo.convert import __main__ as convert_command
    from jaxemo.train import checkpoint

    expected = convert_clip.from_hf_clip(hf_model.state_dict(), vision_heads=2, text_heads=4)
    state = openai_named(hf_model.state_dict())
    params = convert_clip.from_openai_clip(state, vision_heads=2, text_heads=4)
    path = str(tmp_path / "ViT-tiny.pt")
    torchscript_archive(state, path)
    convert_command.main(["clip", path, str(tmp_path / "out"), "--num_heads=2", "--text_heads=4"])
    for got in (params, checkpoint.load_params(str(tmp_path / "out"))):
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="ResNet image towers are not supported"):
        convert_clip.from_openai_clip({"visual.layer1.0.conv1.weight": np.zeros(1)}, 2, 4)
