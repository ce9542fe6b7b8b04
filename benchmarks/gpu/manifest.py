"""What the GPU machine's image lacks, and the wheels that bring it.

The image (`image_packages.txt`) has jax 0.11.2 with CUDA plugins, flax, optax, orbax-checkpoint, torch and
most of what jaxemo imports, but not grain, ml-collections, tensorflow-datasets, tensorboardX or
kaldi-native-fbank. `wheels.txt` pins those and every requirement of theirs that the image lacks either; the
machine cannot reach a registry, so they travel as wheel files in the repository's `.whl/` (git-ignored) and
`run.sh` installs them there.

    python -m benchmarks.gpu.manifest --check       # every third-party import is in the image or the wheels
    python -m benchmarks.gpu.manifest --resolve     # rewrite wheels.txt from this environment's versions
    python -m benchmarks.gpu.manifest --download    # fetch wheels.txt into .whl/ for Python 3.12, x86-64 Linux
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
SCANNED = ("jaxemo", "benchmarks", "experiments")  # what the GPU suite runs; tests never run there
# The top of what jaxemo needs beyond the image (pyproject.toml's dependencies that the image lacks).
NEEDED = ("grain", "ml-collections", "tensorflow-datasets", "tensorboardX", "kaldi-native-fbank")
# The image's interpreter, for evaluating requirement markers.
TARGET_ENVIRONMENT = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
                      "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                      "os_name": "posix", "implementation_name": "cpython", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(filename: str) -> list[str]:
    with open(os.path.join(HERE, filename)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def image_packages() -> set[str]:
    return {normalize(n) for n in _names("image_packages.txt")}


def carried() -> dict[str, str]:
    """wheels.txt: distribution -> pinned version."""
    out = {}
    for line in _names("wheels.txt"):
        name, _, version = line.partition("==")
        out[normalize(name)] = version
    return out


def third_party_imports(roots=SCANNED, base: str = REPO_ROOT) -> dict[str, list[str]]:
    """Top-level module -> the files that import it, over every .py under `roots` (function-level imports
    included: a converter's lazy `import torch` runs on the GPU machine too). Local and standard modules are
    left out."""
    local = {*SCANNED, "tests"}
    found: dict[str, list[str]] = {}
    for root in roots:
        for folder, _, files in os.walk(os.path.join(base, root)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        modules = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        top = module.split(".")[0]
                        if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                            found.setdefault(top, []).append(os.path.relpath(path, base))
    return found


def distributions_of(module: str) -> list[str]:
    """The installed distributions that provide a top-level module (this environment's metadata)."""
    return sorted({normalize(d) for d in metadata.packages_distributions().get(module, [])})


def requirements(distribution: str) -> list[str]:
    """A distribution's requirements that apply on the image (markers evaluated for it, extras skipped)."""
    out = []
    for spec in metadata.requires(distribution) or []:
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate(TARGET_ENVIRONMENT):
            out.append(normalize(requirement.name))
    return out


def resolve(needed=NEEDED) -> dict[str, str]:
    """Every distribution that `needed` pulls in and the image lacks, at this environment's versions."""
    image, out, todo = image_packages(), {}, [normalize(n) for n in needed]
    while todo:
        name = todo.pop()
        if name in image or name in out:
            continue
        out[name] = metadata.version(name)
        todo += requirements(name)
    return dict(sorted(out.items()))


def problems(imports: dict[str, list[str]] | None = None) -> list[str]:
    """What would fail to import on the GPU machine: a module (of `imports`, default jaxemo's) that neither the
    image nor the wheels provide, or a carried wheel whose own requirement is in neither."""
    image, wheels = image_packages(), carried()
    available = image | set(wheels)
    found = []
    for module, files in sorted((third_party_imports() if imports is None else imports).items()):
        dists = distributions_of(module)
        if not dists:
            found.append(f"{module} (imported by {files[0]}) belongs to no installed distribution")
        elif not set(dists) & available:
            found.append(f"{module} (from {', '.join(dists)}; imported by {files[0]}) is neither in the image "
                         f"nor in wheels.txt")
    for name in wheels:
        for requirement in requirements(name):
            if requirement not in available:
                found.append(f"{requirement}, required by the carried {name}, is neither in the image nor in "
                             "wheels.txt")
    return found


def download_command(requirement: str, dest: str = ".whl") -> list[str]:
    """The device notes' recipe: a binary wheel for the image's Python 3.12 on x86-64 Linux, no dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return command + ["-d", dest, requirement]


def download(dest: str = ".whl") -> list[str]:
    """Fetches every carried wheel; a pure-Python package published only as a source archive (promise) is
    built into a wheel here instead, which installs anywhere. Returns what could be neither."""
    failed = []
    for name, version in carried().items():
        requirement = f"{name}=={version}"
        if subprocess.call(download_command(requirement, dest), cwd=REPO_ROOT) == 0:
            continue
        built = subprocess.call([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dest, requirement],
                                cwd=REPO_ROOT)
        if built != 0:
            failed.append(requirement)
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--resolve", action="store_true")
    p.add_argument("--download", action="store_true")
    args = p.parse_args(argv)
    if args.resolve:
        pins = resolve()
        with open(os.path.join(HERE, "wheels.txt"), "w") as f:
            f.write("# Carried to the GPU machine as wheels (benchmarks/gpu/manifest.py --resolve): what jaxemo "
                    "needs and the image lacks.\n" + "".join(f"{n}=={v}\n" for n, v in pins.items()))
        print("\n".join(f"{n}=={v}" for n, v in pins.items()))
    if args.check:
        found = problems()
        print("\n".join(found) if found else "every third-party import is in the image or in wheels.txt")
        if found:
            return 1
    if args.download:
        os.makedirs(os.path.join(REPO_ROOT, ".whl"), exist_ok=True)
        failed = download()
        print(f"could not fetch or build: {failed}" if failed else "every carried wheel is in .whl/")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
