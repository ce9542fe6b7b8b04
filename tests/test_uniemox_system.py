"""UniEmoX's stages as the trainer runs them: views, the pretraining task under FSDP, the fine-tuning task and its
start from the pretrained encoder, the stage configs, FLOPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments.configs import uniemox as recipe
from jaxemo import vit
from jaxemo.data import augment, synthetic_scenes
from jaxemo.systems import uniemox
from jaxemo.systems.uniemox import finetune, pretrain
from jaxemo.train import loop, sharding, state as state_lib


def tiny_config(**model):
    config = recipe.get_config("tiny")
    config.model.update(**{**dict(image_size=16, width=32, depth=2, num_heads=2, mlp_dim=64, decoder_width=16,
                                  decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32), **model})
    config.teacher.update(vision_width=32, vision_depth=1, vision_heads=2, vision_mlp_dim=64, embed_dim=16,
                          text_width=16, text_depth=1, text_heads=2, text_mlp_dim=32)
    return config


def finetune_config(config, num_classes: int, linear_probe: bool = False):
    """A copy of `config` whose fine-tuning classifier has `num_classes` classes (or is a linear probe)."""
    out = config.copy_and_resolve_references()
    out.data.num_classes = num_classes
    out.finetune.linear_probe = linear_probe
    return out


@pytest.fixture(scope="module")
def pretraining():
    """A tiny pretraining setup on 8 devices as data 4 x fsdp 2, its state after two steps, and the first."""
    config = uniemox.stage_config(tiny_config(), "pretrain")
    config.update(batch_size=8, frozen_dtype="bfloat16")
    config.mesh.update(data=4, fsdp=2)
    config.sharding.min_sharded_size = 1024  # every kernel this big must really be split
    config.teacher.update(vocab_size=64, eot_token_id=2)
    model = pretrain.build_pretrainer(config)
    task = pretrain.PretrainTask(model)
    batch = uniemox.pretrain_batch(8, 24, 16)
    mesh = sharding.make_mesh(dict(config.mesh))
    example = state_lib.example_batch_like(batch)
    setup = loop.setup_train_step(config, task, example, mesh, 10, 5)
    state, _ = state_lib.create_train_state(task, setup.tx, example, jax.random.key(0), mesh, setup.rules,
                                            setup.frozen_dtype)
    first = jax.tree.map(np.array, jax.device_get(state))  # a real copy: the steps donate the state's buffers
    sharded = sharding.shard_batch(batch, mesh)
    for _ in range(2):
        state, metrics = setup.train_step(state, sharded)
    return dict(config=config, task=task, batch=batch, first=first, state=state, metrics=metrics, setup=setup)


def test_views_crop_the_person_box_or_fall_back_to_a_second_crop():
    image = np.zeros((2, 20, 20, 3), np.uint8)
    image[:, 4:14, 10:16] = 200  # the person
    boxes = np.array([[0.5, 0.2, 0.8, 0.7]] * 2, np.float32)  # xyxy of that region
    has_person = np.array([True, False])
    two_views = jax.jit(pretrain.two_views, static_argnames=("size", "train"))  # as the tasks run it
    scene, person = two_views(None, image, boxes, has_person, size=8, train=False)
    np.testing.assert_allclose(person[0], 200 / 255.0, atol=1e-5)  # the box, resized
    np.testing.assert_allclose(person[1], augment.resize(image[1], 8) / 255.0, atol=1e-6)  # no person: whole image
    np.testing.assert_allclose(scene, augment.resize(image, 8) / 255.0, atol=1e-6)
    _, person = two_views(jax.random.key(3), image, boxes, has_person, size=8, train=True)
    np.testing.assert_allclose(person[0], 200 / 255.0, atol=1e-5)  # a flip does not change a plain box
    assert float(jnp.std(person[1])) > 0.05  # the fallback is a random crop of the whole picture
    assert pretrain.box_crop(jnp.array([0.0, 0.0, 0.001, 0.001]), 20, 20).tolist() == [0, 0, 1, 1]


def test_pretraining_trains_the_student_and_freezes_the_bf16_teacher_under_fsdp(pretraining):
    state, first = pretraining["state"], pretraining["first"]
    assert set(state.frozen) == {"teacher"} and set(state.trainable) == {"uniemox"}
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.frozen))
    for a, b in zip(jax.tree.leaves(first.frozen), jax.tree.leaves(jax.device_get(state.frozen))):
        np.testing.assert_array_equal(a, b)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first.trainable),
                                                   jax.tree.leaves(jax.device_get(state.trainable)))]
    assert sum(moved) > 0.8 * len(moved)
    metrics = pretraining["metrics"]
    assert {"reconstruction", "similarity", "contrastive", "person_fallback"} <= set(metrics)
    assert np.isfinite(float(metrics["loss"]))
    assert float(metrics["person_fallback"]) == pytest.approx(1 - pretraining["batch"]["has_person"].mean())
    fc1 = state.trainable["uniemox"]["student"]["encoder"]["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "fsdp", "tensor")
    teacher_fc1 = state.frozen["teacher"]["visual"]["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert "fsdp" in teacher_fc1.sharding.spec


def test_pretraining_evaluation_ignores_padding_rows(pretraining):
    task, state, batch = pretraining["task"], pretraining["state"], dict(pretraining["batch"])
    batch["mask"] = np.array([True] * 6 + [False] * 2)
    other = {k: np.array(v) for k, v in batch.items()}
    other["image"][6:] = 255 - other["image"][6:]
    other["text_feature"][6:] = -other["text_feature"][6:]
    params = jax.device_get(state.params)
    stats = jax.jit(task.eval_stats)(params, batch)
    np.testing.assert_allclose(float(stats["count"]), 6)
    again = jax.jit(task.eval_stats)(params, other)
    for key in stats:
        np.testing.assert_allclose(stats[key], again[key], rtol=1e-5, atol=1e-6)
    summary = task.summarize(jax.device_get(stats))
    assert summary["loss"] == pytest.approx(summary["reconstruction"] + summary["similarity"]
                                            + summary["contrastive"], rel=1e-5)


def test_prompt_features_follow_each_element_and_name_an_unknown_prompt():
    scenes = synthetic_scenes.SyntheticScenes(6, image_size=24, seed=1)
    classes = recipe.EMOSET_CLASSES
    prompts, count, fallback = pretrain.prompt_table([scenes], classes)
    assert count == 6 and fallback == sum(not scenes[i]["has_person"] for i in range(6))
    table = np.arange(len(prompts) * 4, dtype=np.float32).reshape(len(prompts), 4)
    host = pretrain.PromptFeatures({p: i for i, p in enumerate(prompts)}, table, classes)
    out = host(scenes[2])
    assert set(out) == {"image", "person_box", "has_person", "text_feature"}
    np.testing.assert_array_equal(out["text_feature"], table[prompts.index(uniemox.example_prompt(scenes[2], classes))])
    assert uniemox.example_prompt(scenes[2], classes).endswith(f"is {classes[int(scenes[2]['label'])]}.")
    with pytest.raises(KeyError, match=r"synthetic_scenes/1/3.*no cached text feature"):
        pretrain.PromptFeatures({}, table, classes)(scenes[3])


def test_the_classifier_starts_from_the_pretrained_encoder(pretraining):
    config = finetune_config(pretraining["config"], 5)
    task = finetune.build_task(config)
    model = task.model
    template = jax.device_get(nn.unbox(jax.jit(task.init)(jax.random.key(1),
                                                          uniemox.finetune_batch(2, 16, 5))["params"]))
    encoder = finetune.student_encoder(jax.device_get(pretraining["state"].params))
    params = finetune.init_from_encoder(encoder, model)(template)
    np.testing.assert_array_equal(params["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"],
                                  encoder["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"])
    np.testing.assert_array_equal(params["patch_embed"]["kernel"], encoder["patch_embed"]["kernel"])
    table = vit.sincos_pos_embed_2d(model.width, model.grid)
    np.testing.assert_array_equal(params["pos_embed"], table)
    np.testing.assert_array_equal(finetune.init_random(model)(template)["pos_embed"], table)
    assert "norm" not in params and set(params["fc_norm"]) == {"scale", "bias"}
    wider = finetune.build_task(finetune_config(tiny_config(width=48, num_heads=2), 5)).model
    wide = nn.unbox(jax.eval_shape(lambda: wider.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"])
    wide_template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), wide)
    with pytest.raises(ValueError, match=r"patch_embed/bias: checkpoint shape \(32,\), model shape \(48,\)"):
        finetune.init_from_encoder(encoder, wider)(wide_template)
    with pytest.raises(KeyError, match="no MAE encoder"):
        finetune.student_encoder({"head": {}})


def test_finetune_task_mixes_labels_and_reports_top3():
    from sklearn.metrics import top_k_accuracy_score

    config = uniemox.stage_config(tiny_config(), "finetune")
    config.finetune.update(mixup=0.8, cutmix=1.0, rand_augment=True, random_erasing=0.25, drop_path_rate=0.1)
    task = finetune.build_task(finetune_config(config, 6))
    batch = uniemox.finetune_batch(8, 24, 6, seed=2)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)["params"])
    params["head"]["kernel"] = jax.random.normal(jax.random.key(5), params["head"]["kernel"].shape)
    loss, _ = jax.jit(lambda p, b, k: task.loss(p, b, k))(params, batch, jax.random.key(1))
    assert np.isfinite(float(loss)) and task.mixing is not None
    stats = jax.jit(task.eval_stats)(params, batch)
    logits = np.asarray(jax.jit(task.logits)(params, batch))
    expected = top_k_accuracy_score(batch["label"], logits, k=3, labels=np.arange(6))
    assert task.summarize(jax.device_get(stats))["top3_accuracy"] == pytest.approx(expected)
    probe = finetune.build_task(finetune_config(config, 6, linear_probe=True))
    assert probe.mixing is None and probe.model.drop_path_rate == 0.0
    assert probe.is_trainable(("head", "kernel")) and probe.is_trainable(("fc_norm", "scale"))
    assert not probe.is_trainable(("encoder", "layers", "block", "mlp", "fc1", "kernel"))


def test_stage_configs_scale_the_learning_rate_and_span_the_student():
    config = recipe.get_config("paper")
    stage = uniemox.stage_config(config, "pretrain")
    assert stage.batch_size == 512 and stage.num_epochs == 800
    assert stage.optimizer.learning_rate == pytest.approx(1e-3 * 512 / 256) and stage.optimizer.b2 == 0.95
    fine = uniemox.stage_config(config, "finetune")
    assert fine.optimizer.layer_decay_depth == 24 and fine.best.metric == "accuracy"
    assert fine.optimizer.learning_rate == pytest.approx(1e-3 * 64 / 256)
    assert "batch_size" not in config and "optimizer" not in config  # the recipe itself is left as it was
    with pytest.raises(ValueError, match="stage 'decode'"):
        uniemox.stage_config(config, "decode")
    from experiments import uniemox as experiment
    from jaxemo.data import builders

    assert set(config.finetune.datasets) <= set(builders.REGISTRY) and config.data.name in builders.REGISTRY
    config.finetune.manual_dirs.emotion6 = "/data/Emotion6"
    data, classes, _ = experiment.finetune_data(config, "emotion6")
    assert (data.name, data.manual_dir, classes) == ("emotion6", "/data/Emotion6", 6)
    with pytest.raises(ValueError, match="set --config.finetune.manual_dirs.heco=<folder>"):
        experiment.finetune_data(config, "heco")


def test_pretraining_flops_match_xla_on_the_matmuls():
    config = tiny_config()
    # unrolled: XLA's cost analysis counts a scanned loop's body once
    config.model.update(image_size=32, width=64, depth=1, mlp_dim=256, decoder_width=32, decoder_mlp_dim=128,
                        scan_layers=False)
    config.teacher.update(vision_width=64, vision_mlp_dim=256, embed_dim=32)
    config.teacher.update(vocab_size=64, eot_token_id=2)
    model = pretrain.build_pretrainer(config)
    task = pretrain.PretrainTask(model)
    batch = uniemox.pretrain_batch(4, 32, 32)
    params = jax.eval_shape(task.init, jax.random.key(0), batch)["params"]  # shapes are all lower() needs
    views = task.views(None, batch, train=False)
    forward = jax.jit(lambda p: model.apply({"params": p}, *views, rngs={"masking": jax.random.key(0)}))
    cost = forward.lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    counted = pretrain.flops(model)["forward"] * 4
    assert 0.85 * cost["flops"] < counted < 1.05 * cost["flops"]  # XLA also counts the elementwise work


def test_pretraining_starts_from_converted_mae_and_clip_checkpoints(pretraining, tmp_path):
    """The paper's starts: `pretrained.mae` and `teacher.checkpoint` + `teacher.tokenizer` (as `python -m
    jaxemo.convert` writes them) become the student's and the teacher's initial params."""
    from experiments import uniemox as experiment
    from jaxemo.data import text as text_lib
    from jaxemo.train import checkpoint

    config = tiny_config()
    prompts = [uniemox.emotion_prompt({"scene": "beach"}, e) for e in recipe.EMOSET_CLASSES]
    tokenizer_path = text_lib.train_bpe_tokenizer(prompts, str(tmp_path / "tokenizer.json"), 64)
    tokenizer = text_lib.ClipTokenizer(tokenizer_path)
    clip_model = pretrain.build_teacher(pretrain.with_tokenizer(config.copy_and_resolve_references(), tokenizer))
    clip_params = nn.unbox(jax.jit(clip_model.init)(jax.random.key(3), jnp.zeros((1, 16, 16, 3)),
                                                    tokenizer(prompts[:1])))
    checkpoint.save_params(str(tmp_path / "clip"), clip_params["params"])
    student = pretrain.build_student(config).student
    mae_params = nn.unbox(jax.jit(student.init)({"params": jax.random.key(4), "masking": jax.random.key(5)},
                                                jnp.zeros((1, 16, 16, 3))))["params"]
    checkpoint.save_params(str(tmp_path / "mae"), mae_params)
    config.teacher.update(checkpoint=str(tmp_path / "clip"), tokenizer=tokenizer_path)
    config.pretrained.mae = str(tmp_path / "mae")

    model, params, loaded_tokenizer, teacher_id = experiment.teacher(config, str(tmp_path / "run"), None, None, [])
    assert teacher_id == str(tmp_path / "clip") and loaded_tokenizer.end_id == tokenizer.end_id
    features = uniemox.text_features(model, params, loaded_tokenizer, prompts)
    assert features.shape == (8, 16) and np.isfinite(features).all()
    template = jax.device_get(pretraining["first"].params)
    out = pretrain.init_params(config, params)(template)
    np.testing.assert_array_equal(out["uniemox"]["student"]["decoder_pred"]["kernel"],
                                  mae_params["decoder_pred"]["kernel"])
    np.testing.assert_array_equal(out["teacher"]["visual"]["patch_embed"]["kernel"],
                                  clip_params["params"]["visual"]["patch_embed"]["kernel"])
    np.testing.assert_array_equal(out["uniemox"]["fuse"]["proj"]["kernel"], template["uniemox"]["fuse"]["proj"]["kernel"])
    config.teacher.tokenizer = ""
    with pytest.raises(ValueError, match="teacher.checkpoint needs teacher.tokenizer"):
        experiment.teacher(config, str(tmp_path / "run"), None, None, [])


def test_finetuning_shards_with_fsdp_and_trains():
    config = uniemox.stage_config(tiny_config(), "finetune")
    config.update(batch_size=8)
    config.mesh.update(data=4, fsdp=2)
    config.sharding.min_sharded_size = 1024
    config.finetune.update(mixup=0.8, cutmix=1.0, rand_augment=False, random_erasing=0.25)  # RandAugment: above
    task = finetune.build_task(finetune_config(config, 8))
    batch = uniemox.finetune_batch(8, 24, 8)
    mesh = sharding.make_mesh(dict(config.mesh))
    example = state_lib.example_batch_like(batch)
    setup = loop.setup_train_step(config, task, example, mesh, 10, 5)
    state, _ = state_lib.create_train_state(task, setup.tx, example, jax.random.key(0), mesh, setup.rules)
    fc1 = lambda s: s.trainable["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert fc1(state).sharding.spec == P(None, "fsdp", "tensor")
    before, head = np.asarray(fc1(state)), np.asarray(state.trainable["head"]["kernel"])
    for _ in range(2):  # the warm-up's first learning rate is 0
        state, metrics = setup.train_step(state, sharding.shard_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(head, np.asarray(state.trainable["head"]["kernel"]))  # zero-initialised, as MAE's
    assert not np.array_equal(before, np.asarray(fc1(state)))
