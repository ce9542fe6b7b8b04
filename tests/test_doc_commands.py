"""Every `python -m` command that README.md and BENCHMARKS.md show names a module that exists, and its
arguments still parse: a driver's flags (its `parse_args`), a recipe's config file, variant and `--config.*`
fields, the converter's kinds. Nothing runs here: the runs are other tests' (tiny) or need real data."""

import importlib
import pathlib
import re
import shlex

import pytest

from experiments import configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("README.md", "BENCHMARKS.md")


def doc_commands(text: str) -> list[str]:
    """The `python -m ...` commands of a markdown text: in fenced blocks, indented blocks and inline code,
    continuation lines joined, shell comments and `&&` chains split off."""
    text = re.sub(r"\\\n\s*", " ", text)
    candidates = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    text = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.DOTALL)
    candidates += [line for line in text.splitlines() if line.startswith("    ")]
    candidates += re.findall(r"`([^`]+)`", text)
    commands = []
    for candidate in candidates:
        for line in candidate.splitlines():
            for part in re.split(r"&&|;", line):
                part = " ".join(part.split(" #")[0].split())
                if part.startswith("python -m "):
                    commands.append(part)
    return sorted(set(commands))


def all_commands() -> list[tuple[str, str]]:
    return [(doc, command) for doc in DOCS for command in doc_commands((ROOT / doc).read_text())
            if "<" not in command]  # `python -m benchmarks.<name>`: a pattern, not a command


def check_recipe(module: str, argv: list[str]) -> None:
    """`--config=<file>:<variant>` loads; every `--config.<a>.<b>=...` names a field of it."""
    name, variant = module.split(".")[-1], None
    for arg in argv:
        if arg.startswith("--config="):
            path, _, variant = arg.split("=", 1)[1].partition(":")
            assert (ROOT / path).exists(), path
            name = pathlib.Path(path).stem
    if not (ROOT / "experiments" / "configs" / f"{name}.py").exists():
        return  # a run with flags of its own (mma_dfer_eval)
    config = configs.load(name, variant or None)
    for arg in argv:
        if arg.startswith("--config."):
            node = config
            for key in arg.split("=", 1)[0][len("--config."):].split("."):
                assert key in node, f"{arg}: no field {key!r} in experiments/configs/{name}.py:{variant}"
                node = node[key]


@pytest.mark.parametrize("doc,command", all_commands())
def test_a_documented_command_still_parses(doc, command):
    _, _, module, *argv = shlex.split(command)
    argv = [a for a in argv if a != "..."]
    if module == "pytest":
        return
    loaded = importlib.import_module(module if module != "jaxemo.convert" else "jaxemo.convert.__main__")
    if module.startswith("experiments."):
        check_recipe(module, argv)
    elif "parse_args" in vars(loaded):
        try:
            loaded.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"{doc}: `{command}` does not parse (exit {exit_.code})")


def test_commands_are_found_in_every_form():
    text = ("x\n```bash\npython3 -m venv .venv && python -m experiments.mma_dfer\n```\n"
            "    python -m benchmarks.steps --tiny   # seconds\n"
            "| a | `python -m experiments.casp --config=experiments/configs/casp.py:synthetic \\\n  --workdir=w` |\n")
    assert doc_commands(text) == ["python -m benchmarks.steps --tiny",
                                  "python -m experiments.casp --config=experiments/configs/casp.py:synthetic "
                                  "--workdir=w", "python -m experiments.mma_dfer"]
    assert len(all_commands()) > 50
