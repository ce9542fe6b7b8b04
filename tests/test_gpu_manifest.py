"""The GPU machine's image plus the carried wheels provide every third-party module jaxemo imports, and the
GPU script is well formed (benchmarks/gpu/)."""

import os
import subprocess

from benchmarks.gpu import manifest


def test_every_third_party_import_is_in_the_image_or_the_wheels():
    assert manifest.problems() == []
    imports = manifest.third_party_imports()
    assert {"jax", "flax", "optax", "grain", "tensorflow_datasets", "ml_collections"} <= set(imports)
    assert not {"jaxemo", "benchmarks", "experiments", "os", "__future__"} & set(imports)


def test_what_the_image_lacks_is_carried_with_its_own_requirements():
    wheels, image = manifest.carried(), manifest.image_packages()
    assert {manifest.normalize(n) for n in manifest.NEEDED} <= set(wheels)
    assert not set(wheels) & image  # a carried copy would shadow the image's own
    assert set(manifest.resolve()) <= set(wheels)  # this environment's requirements of them, transitively


def test_a_module_the_machine_lacks_is_named_with_its_importer(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    source = ("import os\nfrom . import sibling\n\n\n"
              "def f():\n    import torchvision  # lazy\n    import transformers\n")
    (package / "mod.py").write_text(source)
    imports = manifest.third_party_imports(("pkg",), base=str(tmp_path))
    assert set(imports) == {"torchvision", "transformers"} and imports["torchvision"] == ["pkg/mod.py"]
    assert manifest.problems({"sklearn": ["pkg/mod.py"], "grain": ["pkg/mod.py"]}) == []  # image; wheels
    # installed here (the test extra's jax[tpu]) but on neither list
    assert manifest.problems({"libtpu": ["pkg/mod.py"]}) == [
        "libtpu (from libtpu; imported by pkg/mod.py) is neither in the image nor in wheels.txt"]
    assert manifest.problems({"not_a_module": ["pkg/mod.py"]}) == [
        "not_a_module (imported by pkg/mod.py) belongs to no installed distribution"]


def test_the_download_recipe_targets_the_image_and_the_script_parses():
    command = manifest.download_command("grain==0.2.18")
    assert command[command.index("--python-version") + 1] == "3.12" and "--no-deps" in command
    assert "manylinux_2_28_x86_64" in command and command[-1] == "grain==0.2.18"
    script = os.path.join(manifest.REPO_ROOT, "benchmarks", "gpu", "run.sh")
    assert subprocess.run(["bash", "-n", script], check=False, capture_output=True).returncode == 0
    with open(script) as f:
        text = f.read()
    assert "--target /tmp/site" in text and "-m benchmarks.gpu_suite" in text and '"$OUT/BENCHMARKS.md"' in text
