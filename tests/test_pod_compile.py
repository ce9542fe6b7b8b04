"""Every system's train step compiles for a TPU topology on this CPU (libtpu from `jax[tpu]`, AOT only), with
its parameters sharded over the pod's fsdp axis: a change that breaks pod sharding fails here."""

import os
import subprocess
import sys

import pytest

from benchmarks import pod_compile  # needs libtpu: the test extra installs jax[tpu]
from jaxemo import perf
from jaxemo.train import sharding

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mesh():
    return sharding.topology_mesh("v5e:2x2")


# The ViT classifier compiles below, at two pod sizes; UniEmoX's fine-tuning step is that ViT with on-device
# augmentation, nothing a TPU compile checks beyond the CPU's.
@pytest.mark.parametrize("system,variant", [(s, "tiny") for s in sorted(pod_compile.paper_variants())
                                            if s != "vit_classifier"])
def test_tiny_train_step_compiles_for_a_tpu_slice(mesh, system, variant):
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


def test_priced_seconds_recovers_the_time_of_the_priced_ops():
    # libtpu reads -1 s per op its model does not price: a lone f32 softmax on v5e 2x2 read -0.999908983707428
    priced, unpriced = perf.priced_seconds(-0.999908983707428)
    assert unpriced == 1 and priced == pytest.approx(9.1016e-5, rel=1e-3)
    assert perf.priced_seconds(-215.98109) == (pytest.approx(0.01891), 216)
    assert perf.priced_seconds(0.0125) == (0.0125, 0)
    # known up to whole seconds: the smallest reading at or above the FLOPs / peak floor (UniEmoX's fine-tuning
    # step on v5e-256 read -824.9724 with a 0.030 s floor: 1.0276 s, not 0.0276)
    assert perf.priced_seconds(-824.9724, floor=0.030) == (pytest.approx(1.0276), 826)
    assert perf.priced_seconds(0.02, floor=0.03) == (pytest.approx(1.02), 1)  # no chip beats its floor


def test_predicted_step_time_and_mfu_beside_a_process_that_holds_libtpu(tmp_path):
    """`python -m benchmarks.tpu_predict --tiny` in a fresh process while another process holds libtpu's
    machine-wide lock (taken without ALLOW_MULTIPLE_LIBTPU_LOAD, as any process that loads libtpu does): the
    compile still works, and the prediction is a time above the FLOPs / peak floor with an MFU in (0, 1]."""
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom jax.experimental import topologies\n"
         "topologies.get_topology_desc(topology_name='v5e:2x2', platform='tpu')\nprint('held', flush=True)\n"
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        path = tmp_path / "BENCHMARKS.md"
        command = [sys.executable, "-m", "benchmarks.tpu_predict", "--tiny", "--systems=vit_classifier", "--write",
                   f"--benchmarks_file={path}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    finally:
        holder.communicate("", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    text = path.read_text()
    assert "<!-- tpu-predict-tiny-vit_classifier-v5e:2x2:tpu-bfloat16 begin -->" in text
    assert "the compiler's cost model, not a measurement" in text
    row = next(line for line in text.splitlines() if line.startswith("| vit_classifier (tiny) | TPU v5e-4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    floor_ms, predicted_ms, mfu = float(cells[6]), float(cells[7]), float(cells[8])
    assert predicted_ms > 0 and predicted_ms >= floor_ms
    assert 0 < mfu <= 100


def test_fewshot_population_step_prediction_for_a_pod(tmp_path):
    """`python -m benchmarks.fewshot --pod=...`: the population step (trials sharded over the chips) compiled
    with the wav2vec2 stack unrolled; a predicted time above the floor, an MFU in (0, 1] and the protocol's
    projected hours, the earliest-stopping bound below the full schedule's."""
    from benchmarks import fewshot

    path = tmp_path / "BENCHMARKS.md"
    (row,) = fewshot.main(["--pod=v5e:2x2", "--tiny", "--trials_per_chip=1", "--write",
                           f"--benchmarks_file={path}"])["pod"]
    assert not row["error"], row["error"]
    assert row["predicted_s"] >= row["floor_s"] > 0 and 0 < row["mfu"] <= 1
    assert 0 < row["hours_earliest"] < row["hours"]
    assert "the TPU compiler's cost model, not a measurement" in path.read_text()


def test_agt_population_step_prediction_and_protocol_steps(tmp_path):
    from benchmarks import agt_pipeline

    # the paper's protocol: 250 round-0 trials of 100 epochs x 126 steps (4,024 samples, batch 32), then the
    # best draw's 5 folds with 6,000 / 12,000 / 18,000 more samples (314, 501, 689 steps per epoch)
    assert agt_pipeline.protocol_steps(256) == (12_600, 100 * (314 + 501 + 689))
    assert agt_pipeline.protocol_steps(4) == (63 * 12_600, 2 * 100 * (314 + 501 + 689))
    path = tmp_path / "BENCHMARKS.md"
    (row,) = agt_pipeline.main(["--pod=v5e:2x2", "--tiny", "--model=agt", "--trials_per_chip=1", "--write",
                                f"--benchmarks_file={path}"])["pod"]
    assert not row["error"], row["error"]
    assert row["predicted_s"] >= row["floor_s"] > 0 and 0 < row["mfu"] <= 1
    assert row["round0_hours"] > 0 and row["rounds_hours"] > 0
    assert "The TPU compiler's cost model, not a measurement" in path.read_text()


def test_parts_attribute_the_compilers_cycles_to_source_operations(mesh):
    """`benchmarks.profiles.tpu_parts --by_op`: the compiled program's per-instruction cycle estimates grouped by
    the JAX operation that produced them, the same name for a layer whether scanned, unrolled or rematerialised."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from benchmarks.profiles import tpu_parts

    assert tpu_parts._source_op("jit(fn)/transpose(jvp(BlockStack))/while/body/closed_call/layers/block/mlp/fc1/"
                                "dot_general") == "transpose(jvp(BlockStack))/layers/block/mlp/fc1/dot_general"
    assert tpu_parts._source_op("jit(fn)/transpose(jvp(BlockStack))/checkpoint/rematted_computation/layers_1/"
                                "block/mlp/fc1/dot_general") == "transpose(jvp(BlockStack))/block/mlp/fc1/dot_general"
    chip = Mesh(np.asarray(mesh.devices.flat[:1]), ("chip",))

    def loss(w, x):
        return jnp.sum(jnp.tanh(jnp.tanh(x @ w[0]) @ w[1]))

    args = (jax.ShapeDtypeStruct((2, 256, 256), jnp.bfloat16), jax.ShapeDtypeStruct((512, 256), jnp.bfloat16))
    row = tpu_parts.predict(jax.grad(loss), args, chip)
    cycles = row["cycles"]
    assert row["predicted_s"] >= row["floor_s"] > 0
    assert sum(cycles.values()) > 0 and not any(op.startswith("jit(") for op in cycles)
    assert any("dot_general" in op and c > 0 for op, c in cycles.items()), cycles
