"""Render the command-line reference (docs/cli.md) from the argparse parser itself.

``python -m medft.cli_docs > docs/cli.md`` regenerates the page; a test fails when
the committed page and the parser disagree, so the reference never drifts.
"""

from __future__ import annotations

import argparse
import os

from medft.cli import LIGHTNING_COMMANDS, build_parser

HEADER = """# Command line

One command, `medft`, with subcommands. This page is generated from the parser
(`python -m medft.cli_docs > docs/cli.md`); a test keeps it in step with the code.

`medft fit|validate|test` are LightningCLI commands: their options are the
config keys of the model, the data module and the Lightning trainer. Print them all,
with the values a config gives them, with `medft fit --config configs/quickstart.yaml
--print_config`.

Errors medft raises on purpose (a bad file, manifest or config key) are printed as one
line, `medft: error: ...`, with exit status 2.
"""


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse offers no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
    return found


def render() -> str:
    """The Markdown page for every non-Lightning subcommand, nested ones included."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page must not depend on it
    parser = build_parser()
    parts = [HEADER]
    stack = [("medft", parser)]
    while stack:
        prefix, current = stack.pop(0)
        for name, sub in _subparsers(current):
            full = f"{prefix} {name}"
            if name in LIGHTNING_COMMANDS:
                continue
            sub.prog = full
            children = _subparsers(sub)
            if children:
                stack.append((full, sub))
                continue
            parts.append(f"## `{full}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
