"""Render the command-line reference (docs/cli.md) from the commands' own parsers.

``python -m medft.cli_docs > docs/cli.md`` regenerates the page; a test fails when
the committed page and the parser disagree, so the reference never drifts.
"""

from __future__ import annotations

import os

from medft.cli import build_parser, command_parser
from medft.cli.commands import COMMANDS, SYNONYMS, VOCABULARY

HEADER = """# Command line

One command, `medft`, with subcommands. This page is generated from the parser
(`python -m medft.cli_docs > docs/cli.md`); a test keeps it in step with the code.

`medft fit|validate|test` are LightningCLI commands: their options are the
config keys of the model, the data module and the Lightning trainer. Print them all,
with the values a config gives them, with `medft fit --config configs/quickstart.yaml
--print_config`.

Errors medft raises on purpose (a bad file, manifest or config key) are printed as one
line, `medft: error: ...`, with exit status 2.

Each command's options are the parameters of the Python function it runs (named in
docs/architecture.md), so the defaults below are that function's defaults.
"""

VOCABULARY_TEXT = (
    "## One name for one idea\n\n"
    + "\n".join(f"- `{option}`: {meaning}" for option, meaning in VOCABULARY.items())
    + "\n\nOlder spellings ("
    + ", ".join(f"`{name}`" for name in SYNONYMS)
    + ") still work where a command had them, with a one-line note.\n"
)


def render() -> str:
    """The Markdown page: the command list, then every non-Lightning command's help."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page must not depend on it
    parts = [HEADER, VOCABULARY_TEXT, f"```text\n{build_parser().format_help().rstrip()}\n```\n"]
    for command in COMMANDS:
        help_text = command_parser(command).format_help().rstrip()
        parts.append(f"## `medft {command.name}`\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
