"""What README and docs/ tell a user to type exists and parses.

Every ``configs/*.yaml`` they name is in the repository; every ``medft ...`` line in their
shell blocks parses with the real parser (LightningCLI's with ``--print_config`` for
``fit``/``validate``/``test``/``predict`` and for the overrides ``medft cv`` passes on);
the examples import no private module. The examples themselves run in tests/test_examples.py.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from medft.cli import LIGHTNING_COMMANDS, parse_args
from medft.cli.commands import BY_NAME

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GENERATED = {ROOT / "docs" / "cli.md"}  # rendered from the parser itself (tests/test_cli.py)
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)[^\n]*\n(.*?)^\1\2\s*$", re.M | re.S)
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
CONFIG_NAME = re.compile(r"configs/(?![A-Z]+\.)[\w.-]+\.ya?ml")  # not configs/NAME.yaml


def _shell_lines(page: Path) -> Iterator[str]:
    """``medft ...`` lines of a page's shell blocks, continuation lines joined."""
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        if match.group(3).lower() not in SHELL_BLOCKS:
            continue
        for line in match.group(4).replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("srun ")
            if line.startswith("medft ") and not line.startswith("medft checkpoint"):
                yield line


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) for every documented ``medft`` command line."""
    return [
        (str(page.relative_to(ROOT)), line)
        for page in PAGES
        if page not in GENERATED
        for line in _shell_lines(page)
    ]


def _tokens(line: str) -> list[str]:
    """The words a shell would pass, with the docs' synopsis notation resolved.

    ``[--opt X]`` counts as given, ``a|b`` as its first choice, ``"$VAR"`` and one-letter
    placeholders (``N``, ``I``) as the number 1; ``[options]`` and
    ``-- LIGHTNING_OVERRIDES ...`` are dropped.
    """
    line = line.replace("-- LIGHTNING_OVERRIDES ...", "")
    words = []
    for word in shlex.split(line, comments=True):
        if word == "[options]":
            continue
        if word.startswith("[-") or word == "[":
            word = word[1:]
        if not word.startswith("["):
            word = word.rstrip("]")
        if "|" in word and not word.startswith("["):
            word = word.split("|")[0]
        if word.startswith("$") or re.fullmatch(r"[A-Z]", word):
            word = "1"
        if word:
            words.append(word)
    return words


def _print_config(subcommand: str, args: list[str]) -> None:
    from medft.lightning_cli import run_lightning

    with pytest.raises(SystemExit) as exited:
        run_lightning(subcommand, [*args, "--print_config"])
    assert exited.value.code in (0, None), f"{subcommand} {args} did not parse"


COMMANDS = documented_commands()


def test_the_docs_show_many_command_lines() -> None:
    assert len(COMMANDS) >= 60
    assert any(line.startswith("medft fit") for _, line in COMMANDS)


def test_every_config_named_in_readme_and_docs_exists() -> None:
    named = {
        (page.relative_to(ROOT).as_posix(), name)
        for page in [*PAGES, *sorted((ROOT / "examples").iterdir())]
        if page.is_file()
        for name in CONFIG_NAME.findall(page.read_text(encoding="utf-8"))
    }
    assert any(name == "configs/quickstart.yaml" for _, name in named)
    missing = sorted((page, name) for page, name in named if not (ROOT / name).is_file())
    assert not missing, f"configs named in docs but absent: {missing}"


@pytest.mark.parametrize(
    ("page", "line"), COMMANDS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COMMANDS)]
)
def test_documented_command_line_parses(
    page: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    words = _tokens(line)[1:]  # without "medft"
    if words[:2] == ["data", "import"] and words[2:3] == ["FORMAT"]:
        words[2] = "folder"  # the synopsis of every format
    if words[0] in LIGHTNING_COMMANDS:
        config = words[words.index("--config") + 1] if "--config" in words else None
        if config is None or not (ROOT / config).is_file():
            pytest.skip(f"{config}: the user's own config (written in the page's text)")
        _print_config(words[0], words[1:])
        return
    cli_words, _, overrides = (
        (words[: words.index("--")], "--", words[words.index("--") + 1 :])
        if "--" in words
        else (words, "", [])
    )
    try:
        args = parse_args(cli_words)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{line}` does not parse (exit {exc.code})")
    assert args.command in BY_NAME, f"{page}: `{line}` names no command"
    old = capsys.readouterr().err
    assert "medft: note:" not in old, f"{page}: `{line}` uses an old option name: {old}"
    config = getattr(args, "config", None)
    if overrides and config and (ROOT / config).is_file():
        _print_config("fit", ["--config", config, *overrides])


def test_examples_import_no_private_module() -> None:
    for script in sorted((ROOT / "examples").glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            private = [n for n in names if any(p.startswith("_") for p in n.split("."))]
            assert not private, f"{script.name} imports private {private}"


# ------------------------------------------------------------------ a newcomer's install


def _requirement_names(extras: set[str]) -> set[str]:
    """Distributions ``pip install -e .[extras]`` installs directly (names only)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in lines}


def _installed_extras(command: str) -> set[str]:
    """The extras of the ``pip install -e .[a,b]`` in a shell line."""
    found = re.search(r"pip install -e \"?'?\.(?:\[([\w,]+)\])?", command)
    assert found, f"no `pip install -e .` in {command!r}"
    return set(filter(None, (found.group(1) or "").split(",")))


def test_readme_first_command_reaches_the_demo() -> None:
    """README's first block installs what `medft demo` needs, then shows `medft demo`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = next(m.group(4) for m in FENCE.finditer(readme) if m.group(3) == "bash")
    install = next(line for line in first.splitlines() if "pip install" in line)
    wanted = _requirement_names({"demo"})
    assert wanted <= _requirement_names(_installed_extras(install)), (
        f"README's first command does not install the demo's {sorted(wanted)}"
    )
    assert any(line.strip().startswith("medft demo") for line in first.splitlines())


def test_readme_says_how_to_serve_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = next(p for p in readme.split("\n\n") if "mkdocs serve" in p)
    assert "mkdocs-material" in _requirement_names(_installed_extras(paragraph.replace("\n", " ")))
