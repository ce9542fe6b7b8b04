"""Every system's train step compiles for a TPU topology on this CPU (libtpu from `jax[tpu]`, AOT only), with
its parameters sharded over the pod's fsdp axis: a change that breaks pod sharding fails here."""

import pytest

from benchmarks import pod_compile  # needs libtpu: the test extra installs jax[tpu]
from jaxemo.train import sharding


@pytest.fixture(scope="module")
def mesh():
    return sharding.topology_mesh("v5e:2x2")


# The ViT classifier compiles below, at two pod sizes; UniEmoX's fine-tuning step is that ViT with on-device
# augmentation, nothing a TPU compile checks beyond the CPU's.
@pytest.mark.parametrize("system,variant", [(s, "tiny") for s in sorted(pod_compile.paper_variants())
                                            if s != "vit_classifier"])
def test_tiny_train_step_compiles_for_a_tpu_slice(mesh, system, variant, monkeypatch):
    from experiments import configs

    original = configs.load

    def load_config(name, variant):  # CASP's tiny model with one layer per encoder: a second adds nothing to shard
        config = original(name, variant)
        if name == "casp":
            config.model.depth = 1
        return config

    monkeypatch.setattr(configs, "load", load_config)
    row = pod_compile.compile_step(system, variant, mesh, "v5e:2x2", per_chip_batch=2, remat="none")
    assert not row.error, row.error
    assert 0 < row.memory_bytes < pod_compile.TOPOLOGIES["v5e:2x2"].hbm_bytes
    assert row.flops_per_chip > 0
    assert mesh.devices.flat[0].platform == "tpu" and dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}


def test_large_replicated_param_is_named_when_compiling_for_a_pod(mesh, monkeypatch):
    from experiments import configs

    original = configs.load

    def load_config(name, variant):  # no rule for "embed": the ViT's big matrices stay whole on every chip
        config = original(name, variant)
        config.sharding.rules = (("embed", None), ("mlp", None))
        config.sharding.min_sharded_size = 1024
        return config

    monkeypatch.setattr(configs, "load", load_config)
    row = pod_compile.compile_step("vit_classifier", "tiny", mesh, "v5e:2x2", per_chip_batch=2, remat="none")
    assert "stay replicated on every device" in row.error and "['encoder']['layers']" in row.error


def test_per_chip_memory_does_not_grow_with_the_pod():
    """The same per-chip batch on a 4x larger pod: the weights split four times finer, the activations stay split
    by batch (`layers.constrain` in the trainer's step), so a chip needs less memory, not more. Without the
    constraints XLA gathered the batch over the fsdp axis and ViT-Ti/16 went from 137 to 222 MiB per chip."""
    from jax.experimental import topologies

    sharding.topology_mesh("v5e:2x2")  # sets up libtpu as the experiment does
    memory = []
    for name, axes in (("v5e:2x2", {"data": 2, "fsdp": 2}), ("v5e:4x4", {"data": 4, "fsdp": 4})):
        devices = topologies.get_topology_desc(topology_name=name, platform="tpu").devices
        mesh = sharding.make_mesh(axes, devices=devices)
        row = pod_compile.compile_step("vit_classifier", "Ti/16", mesh, name, per_chip_batch=2, remat="none")
        assert not row.error, row.error
        assert row.flops_per_chip > 0 and 0 < row.memory_bytes < pod_compile.TOPOLOGIES["v5e:2x2"].hbm_bytes
        memory.append(row.memory_bytes)
    assert memory[1] < memory[0], memory
