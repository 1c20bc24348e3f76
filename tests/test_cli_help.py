"""Every ``medft`` subcommand's --help ends with an example; command groups list their commands."""

from __future__ import annotations

import re

import pytest

from medft.cli import main
from medft.cli_docs import render


def _sections() -> dict[str, str]:
    """``{"medft data check": its --help text}`` for every non-Lightning leaf command."""
    page = render()
    found = re.findall(r"^## `(medft [^`]+)`\n\n```text\n(.*?)\n```", page, re.S | re.M)
    return dict(found)


def test_every_help_ends_with_one_example_of_that_command() -> None:
    sections = _sections()
    assert {"medft synth", "medft data check", "medft predict", "medft weights pull"} <= set(
        sections
    )
    for command, text in sections.items():
        last = text.rstrip().splitlines()[-1]
        assert last.startswith(f"Example: {command} "), (command, last)
        assert text.count("Example:") == 1, command


@pytest.mark.parametrize(
    ("group", "commands"),
    [("data", ["check", "audit", "import"]), ("weights", ["pull"])],
)
def test_a_command_group_alone_lists_its_subcommands(
    group: str, commands: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main([group]) == 2  # an incomplete command is a usage error
    err = capsys.readouterr().err
    assert err.startswith(f"usage: medft {group} ")
    for command in commands:
        assert re.search(rf"^\s+{command}\s+\S", err, re.M), command
    assert "quickstart" not in err  # not the top-level help


def test_a_subcommand_still_runs_its_own_handler(tmp_path, capsys) -> None:
    assert main(["data", "check", "--input", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
