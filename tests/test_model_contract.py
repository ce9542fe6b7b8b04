"""The model contract (`jaxemo/models/__init__.py`): every model file has one factory, `create(variant=None,
**fields)`, taking plain values; reading configs is the systems' job; Flax modules live in the model files.

Nothing here compiles: the models are only constructed."""

import ast
import importlib
import inspect
import pathlib
import pkgutil

import flax.linen as nn
import pytest
from ml_collections import config_dict

import jaxemo
from jaxemo import models, systems, vit

JAXEMO = pathlib.Path(jaxemo.__file__).parent
MODEL_FILES = [vit] + [importlib.import_module(f"{models.__name__}.{info.name}")
                       for info in pkgutil.iter_modules(models.__path__)]
# Fields without a default (the rest of every model has one).
REQUIRED_FIELDS = {"jaxemo.models.agt": {"modalities": ("audio", "video", "text")}}
ids = [module.__name__ for module in MODEL_FILES]


def test_the_model_files_are_discovered():
    assert {"jaxemo.vit", "jaxemo.models.wav2vec2", "jaxemo.models.speech_classifier", "jaxemo.models.agt",
            "jaxemo.models.mma_dfer", "jaxemo.models.msa", "jaxemo.models.uniemox"} <= set(ids)


@pytest.mark.parametrize("module", MODEL_FILES, ids=ids)
def test_one_create_factory_of_variant_and_fields(module):
    assert callable(module.create)
    assert not [name for name in vars(module) if name.startswith("create_")], "one factory name: create"
    first, *rest = inspect.signature(module.create).parameters.values()
    assert (first.name, first.default, first.kind) == ("variant", None, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert rest[-1].kind == inspect.Parameter.VAR_KEYWORD, "the module's fields as keyword arguments"
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in rest[:-1])
    model = module.create(**REQUIRED_FIELDS.get(module.__name__, {}))
    assert isinstance(model, nn.Module)


@pytest.mark.parametrize("module", MODEL_FILES, ids=ids)
def test_create_takes_plain_values_not_configs(module):
    required = REQUIRED_FIELDS.get(module.__name__, {})
    with pytest.raises((TypeError, ValueError)):
        module.create(config_dict.ConfigDict({"name": "agt", "variant": "B/16", **required}))
    source = inspect.getsource(module)
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name and name.split(".")[0] in ("ml_collections", "json")}, \
        "config and checkpoint reading belong to the systems and jaxemo/convert"


def _calls(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            yield node


def test_no_attribute_probing_in_the_model_files():
    """Fields are declared, not probed: no hasattr and no getattr with a default."""
    paths = [JAXEMO / "vit.py", JAXEMO / "layers.py", *sorted((JAXEMO / "models").glob("*.py"))]
    found = [f"{path.name}:{call.lineno}" for path in paths for call in _calls(path)
             if call.func.id == "hasattr" or (call.func.id == "getattr" and len(call.args) == 3)]
    assert not found


def _flax_module_classes(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base) for base in node.bases]
            if any(base in ("nn.Module", "linen.Module", "flax.linen.Module", "Module") for base in bases):
                names.append(f"{node.name}:{node.lineno}")
    return names


def test_flax_modules_live_in_the_model_files():
    loaded = [importlib.import_module(info.name)
              for info in pkgutil.walk_packages(systems.__path__, prefix=f"{systems.__name__}.")]
    assert len(loaded) > 10
    defined_in_systems = [f"{module.__name__}.{name}" for module in loaded for name, value in vars(module).items()
                          if inspect.isclass(value) and issubclass(value, nn.Module)
                          and value.__module__ == module.__name__]
    assert not defined_in_systems
    # and none defined inside a function either
    in_source = {str(path.relative_to(JAXEMO)): _flax_module_classes(ast.parse(path.read_text()))
                 for path in sorted((JAXEMO / "systems").rglob("*.py"))}
    assert not {path: names for path, names in in_source.items() if names}
    assert _flax_module_classes(ast.parse((JAXEMO / "models" / "speech_classifier.py").read_text()))  # it can see
