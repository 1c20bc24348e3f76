"""The ``medft`` command: a thin shell over library functions.

Every subcommand is declared once, by the function it runs (medft/cli/commands.py); this
module finds the command named on the command line, builds its parser from that
function's signature, runs it and prints the result. Errors medft raises on purpose
(:class:`MedftError`) are printed as one clear message without a traceback, exit status 2.

The library is imported inside functions here and in commands.py, on purpose: ``medft
--help`` and a mistyped option must answer without importing torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medft.cli.commands import BY_NAME, COMMANDS, GROUPS, Command
from medft.errors import MedftError
from medft.options import add_function_options, check_required

__all__ = ["LIGHTNING_COMMANDS", "build_parser", "command_parser", "find_command", "main",
           "parse_args"]  # fmt: skip

LIGHTNING_COMMANDS = ("fit", "validate", "test")
"""Subcommands LightningCLI runs. ``predict`` is medft's own (it writes its predictions)."""


class _VersionAction(argparse.Action):
    """``--version``: the stack, computed only when asked (it imports torch for CUDA)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from medft.provenance import version_text

        print(version_text())
        parser.exit()


RUN_JSON_COMMANDS = (
    "synth", "data audit", "evaluate", "explain", "cv", "quickstart", "bench", "bench scale",
)  # fmt: skip
"""Commands that write run.json into their --out folder (fit writes its own; see lightning_cli)."""


def _record_run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Write run.json (command line, resolved options, versions) into the command's folder."""
    name = args.command
    out = getattr(args, "out", None)
    if name not in RUN_JSON_COMMANDS or out is None or not Path(out).is_dir():
        return
    from medft.provenance import write_run_json

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "argv")}
    write_run_json(out, settings=settings, argv=["medft", *argv])


def command_parser(command: Command, *, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command, its options derived from the function it runs."""
    parser = argparse.ArgumentParser(
        prog=prog or f"medft {command.name}",
        description=command.description or command.summary[:1].upper() + command.summary[1:],
        epilog=f"Example: {command.example}",
    )
    command.add_arguments(parser)
    either: list[str] = []
    for spec in command.options:
        either += add_function_options(parser, spec)
    if command.json:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
    if command.quiet:
        parser.add_argument(
            "--quiet", action="store_true", help="no progress bar or progress lines on stderr"
        )
    if command.trailing is not None:
        parser.add_argument("words", nargs="*", metavar="...", help=command.trailing)
    parser.set_defaults(_required_either=either)
    return parser


def find_command(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The command (or group) named by the first words of ``argv``, and the words after it."""
    for n in (3, 2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and (name in BY_NAME or name in GROUPS):
            return name, list(argv[n:])
    return None, list(argv)


def _group_parser(name: str) -> argparse.ArgumentParser:
    """``medft data``: a group's help lists its subcommands."""
    parser = argparse.ArgumentParser(prog=f"medft {name}", description=GROUPS[name])
    sub = parser.add_subparsers(metavar="COMMAND", title="commands")
    for word, summary in _children(name):
        sub.add_parser(word, help=summary)
    return parser


def _children(prefix: str) -> list[tuple[str, str]]:
    """(next word, summary) of the commands and groups directly under ``prefix``, in order."""
    depth = len(prefix.split()) if prefix else 0
    found: dict[str, str] = {}
    for command in COMMANDS:
        words = command.name.split()
        if len(words) <= depth or " ".join(words[:depth]) != prefix:
            continue
        child = " ".join(words[: depth + 1])
        found.setdefault(words[depth], GROUPS.get(child, command.summary))
    return list(found.items())


def build_parser() -> argparse.ArgumentParser:
    """``medft``'s top-level parser: ``--version``, ``--help`` and the list of commands."""
    parser = argparse.ArgumentParser(
        prog="medft",
        description="Fine-tune ImageNet-pretrained models on DICOM X-rays. "
        "`medft fit|validate|test --help` shows the training options; "
        "`medft COMMAND --help` the options of any other command.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print medft's version and its stack (python, torch, timm, lightning, monai, "
        "pydicom, CUDA when present) and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for word, summary in _children(""):
        sub.add_parser(word, help=summary)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{name} with a YAML config (LightningCLI; see --help)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a non-Lightning command line (``argv`` without the program name).

    The namespace carries ``command`` (the command's words) besides its options. Help,
    ``--version`` and usage errors exit as argparse does (0 or 2).
    """
    name, rest = find_command(argv)
    if name is None:
        parser = build_parser()
        parser.parse_args(list(argv) or ["--help"])  # --help, --version or an error: exits
        parser.error(f"unknown command: {' '.join(argv)}")
    if name in GROUPS:
        group = _group_parser(name)
        group.parse_args(rest or [])  # --help exits 0; a wrong word exits 2
        group.print_help(sys.stderr)
        raise SystemExit(2)  # `medft data` alone: which one?
    command = BY_NAME[name]
    parser = command_parser(command)
    args = parser.parse_args(rest)
    check_required(parser, args, args._required_either)
    del args._required_either
    args.command = name
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medft`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from medft import signals

    if argv[:1] in (["fit"], ["cv"]):
        signals.install()  # SIGTERM/SIGINT: last.ckpt saved, exit 143/130, never DONE
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from medft.lightning_cli import run_lightning

            run_lightning(argv[0], argv[1:])
            signals.raise_if_received("after the last batch")
            return 0
        if not argv:
            build_parser().print_help()
            return 0
        name, rest = find_command(argv)
        if name in GROUPS and not rest:  # `medft data`: which one? (a usage error)
            _group_parser(name).print_help(sys.stderr)
            return 2
        args = parse_args(argv)
        if getattr(args, "quiet", False):
            from medft.progress import set_quiet

            set_quiet(True)
        args.argv = ["medft", *argv]  # the command line run.json records
        command = BY_NAME[args.command]
        status = command.show(args, command)
        _record_run(args, argv)
        return status
    except MedftError as exc:
        print(f"medft: error: {exc}", file=sys.stderr)
        return 2
    except signals.Interrupted as exc:
        print(f"medft: {exc}", file=sys.stderr)
        return exc.exit_status
    except SystemExit:
        signum = signals.received()  # Lightning exits 1 on a second Ctrl-C
        if signum is None:
            raise
        print(f"medft: {signals.Interrupted(signum)}", file=sys.stderr)
        return signals.exit_status(signum)
    except KeyboardInterrupt:
        print("medft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
