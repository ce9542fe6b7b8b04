"""The import graph, read from the source (every import, at any depth in a module), and the written contracts
instead of probes.

Layers, lowest first; a module may import its own unit and the units below it, never one above:

    jaxemo.layers, jaxemo.perf       building blocks and run-time measurement
    jaxemo.vit, jaxemo.data          the shared encoder; data sources, pipelines, builders
    jaxemo.train                     sharding, the update step, the trainer, populations, checkpoints,
                                     evaluation under modality failures
    jaxemo.models                    one file per model
    jaxemo.tta, jaxemo.convert       test-time adaptation; PyTorch checkpoints -> params
    jaxemo.systems                   one package per system (none imports another), the registry
    experiments                      recipe configs and runs
    benchmarks                       drivers, PyTorch twins, profiles, the BENCHMARKS.md writer
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RANK = {"jaxemo.layers": 0, "jaxemo.perf": 0, "jaxemo.vit": 1, "jaxemo.data": 1, "jaxemo.train": 2,
        "jaxemo.models": 3, "jaxemo.tta": 4, "jaxemo.convert": 4, "jaxemo.systems": 5, "jaxemo": 5,
        "experiments": 6, "benchmarks": 7}


def unit(module: str) -> str:
    """The layer a dotted module name belongs to (None outside the project)."""
    parts = module.split(".")
    if parts[0] != "jaxemo":
        return parts[0] if parts[0] in RANK else None
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in RANK else "jaxemo"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved; `from a import b` gives `a.b`
    where b is a module of the project, else `a`)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return found


def project_modules():
    for top in ("jaxemo", "experiments", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path


def edges():
    for path in project_modules():
        source = module_name(path)
        for target in imports(path):
            if unit(target) is not None:
                yield path, source, target


def test_no_import_runs_back_up():
    upward = [f"{path.relative_to(ROOT)}: {source} imports {target}" for path, source, target in edges()
              if unit(target) != unit(source) and RANK[unit(target)] >= RANK[unit(source)]]
    assert not upward, "\n".join(upward)


def test_the_library_never_imports_experiments_or_benchmarks():
    found = [f"{path.relative_to(ROOT)} imports {target}" for path, source, target in edges()
             if source.startswith("jaxemo") and unit(target) in ("experiments", "benchmarks")]
    assert not found, "\n".join(found)


def test_no_system_imports_another():
    def system_of(module):
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[:2] == ["jaxemo", "systems"] and parts[2] != "base" else None

    found = [f"{path.relative_to(ROOT)} imports {target}" for path, source, target in edges()
             if system_of(source) and system_of(target) and system_of(source) != system_of(target)]
    assert not found, "\n".join(found)


def test_the_checks_see_a_violation():
    """The graph reader resolves relative and nested imports, so a violation cannot hide in either form."""
    assert unit("jaxemo.train.loop") == "jaxemo.train" and unit("jaxemo.systems.casp") == "jaxemo.systems"
    assert unit("numpy") is None and unit("benchmarks.steps") == "benchmarks"
    found = imports(ROOT / "jaxemo" / "train" / "loop.py")
    assert "jaxemo.perf" in found and "jaxemo.data.pipeline" in found


def probes(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """`hasattr(...)` calls and three-argument `getattr(...)` calls (a default: a probe) in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "hasattr" or (node.func.id == "getattr" and len(node.args) == 3):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_duck_typed_probing_in_the_library():
    """Data sources, builders, configs and checkpoints are read through written contracts (the `DataSource`
    protocol beside `Task`, builder defaults, config fields), not probed with hasattr / getattr defaults."""
    found = [line for path in sorted((ROOT / "jaxemo").rglob("*.py")) for line in probes(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("code,count", [("hasattr(source, 'read_batch')", 1), ("getattr(c, 'x', None)", 1),
                                        ("getattr(module, name)", 0)])
def test_the_probe_check_finds_probes(tmp_path, code, count):
    path = tmp_path / "m.py"
    path.write_text(f"x = {code}\n")
    assert len(probes(path, tmp_path)) == count
