"""Commands are declared once, by their functions, and speak one vocabulary (issue 19).

Each command's options are read from the signature and docstring of the function it runs
(medft/options.py, medft/cli/commands.py); these tests hold the command line to that: every
parameter is an option with the function's own default and a help line, choices come from
``Literal`` types, one idea has one option name, and the old names still work.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

from medft.cli import command_parser, main, parse_args
from medft.cli.commands import BY_NAME, COMMANDS, SYNONYMS, VOCABULARY
from medft.options import FunctionOptions, add_function_options, option_name


def _visible_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        flag: action
        for action in parser._actions  # argparse has no public list of its options
        for flag in action.option_strings
        if action.help != argparse.SUPPRESS
    }


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_parameter_is_an_option_with_the_functions_default(command) -> None:
    parser = command_parser(command)
    by_dest = {a.dest: a for a in parser._actions if a.help != argparse.SUPPRESS}
    for spec in command.options:
        for parameter in spec.parameters():
            action = by_dest.get(spec.dest(parameter.name))
            assert action is not None, f"{command.name}: {parameter.name} is not an option"
            assert action.help and action.help != argparse.SUPPRESS, parameter.name
            if parameter.default is inspect.Parameter.empty or parameter.name in spec.positional:
                continue
            default = action.default
            expected = parameter.default
            if isinstance(expected, tuple):
                expected = list(expected)
            assert default == expected, (command.name, parameter.name, default, expected)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_one_name_for_one_idea(command) -> None:
    visible = _visible_options(command_parser(command))
    assert not set(visible) & set(SYNONYMS), f"{command.name} shows {set(visible) & set(SYNONYMS)}"


def test_the_shared_names_are_used_where_the_idea_appears() -> None:
    options = {c.name: set(_visible_options(command_parser(c))) for c in COMMANDS}
    for name in ("data check", "data audit", "evaluate", "explain", "predict", "data import nih"):
        assert "--input" in options[name], name
    for name in ("synth", "data check", "data audit", "evaluate", "predict"):
        assert "--workers" in options[name], name
    for name in ("data audit", "explain"):
        assert "--labels" in options[name], name
    assert set(VOCABULARY) <= set().union(*options.values())


def test_evaluate_exposes_every_setting_of_the_function() -> None:
    """`ci`, `uncertain` and `min_subgroup` were never reachable from the command line."""
    args = parse_args(["evaluate", "--checkpoint", "m", "--input", "t.csv", "--out", "e", "--ci",
                       "0.9", "--uncertain", "positive", "--min-subgroup", "5"])  # fmt: skip
    kwargs = BY_NAME["evaluate"].options[0].kwargs(args)
    assert (kwargs["ci"], kwargs["uncertain"], kwargs["min_subgroup"]) == (0.9, "positive", 5)
    assert (kwargs["manifest"], kwargs["num_workers"]) == ("t.csv", 0)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["evaluate", "--checkpoint", "m", "--input", "t", "--out", "e", "--aggregate", "x"],
         "--aggregate"),
        (["explain", "--checkpoint", "m", "--input", "t", "--out", "e", "--method", "x"],
         "--method"),
        (["synth", "--out", "s", "--n-patients", "2", "--shortcut", "x"], "--shortcut"),
        (["export", "--checkpoint", "m", "--out", "e", "--format", "x"], "--format"),
        (["data", "import", "vindr", "--input", "r", "--out", "o", "--rule", "x"], "--rule"),
        (["predict", "--checkpoint", "m", "--input", "t", "--out", "e", "--on-bad-file", "x"],
         "--on-bad-file"),
    ],
)  # fmt: skip
def test_choices_come_from_literal_types_and_are_checked_while_parsing(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: invalid choice: 'x'" in err


def test_a_wrong_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["synth", "--out", "s", "--n-patients", "many"])
    assert exited.value.code == 2
    assert "--n-patients: invalid int value: 'many'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "dest", "value", "old"),
    [
        (["data", "check", "--manifest", "m.csv"], "input", "m.csv", "--manifest"),
        (["data", "import", "nih", "--root", "r", "--out", "o"], "input", "r", "--root"),
        (["evaluate", "--checkpoint", "c", "--manifest", "t", "--out", "e", "--num-workers", "3"],
         "workers", 3, "--num-workers"),
        (["explain", "--checkpoint", "c", "--input", "i", "--out", "o", "--findings", "a", "b"],
         "labels", ["a", "b"], "--findings"),
    ],
)  # fmt: skip
def test_old_option_names_still_work_with_a_note(
    argv: list[str], dest: str, value: object, old: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert f"medft: note: {old} is now {option_name(dest)}" in err


def test_a_required_option_given_by_its_old_name_only_is_enough_and_neither_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args(["data", "audit", "--manifest", "m.csv"]).input == "m.csv"
    with pytest.raises(SystemExit) as exited:
        parse_args(["data", "audit"])
    assert exited.value.code == 2
    assert "the following arguments are required: --input" in capsys.readouterr().err


def test_a_group_alone_lists_its_commands_and_import_lists_every_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["data", "import"]) == 2
    err = capsys.readouterr().err
    for fmt in ("nih", "chexpert", "mimic", "rsna", "siim", "vindr", "medmnist", "folder"):
        assert f"    {fmt} " in err, fmt


def test_each_import_format_takes_only_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`nih --rule` was accepted by the parser and refused later; now nih has no --rule."""
    with pytest.raises(SystemExit):
        parse_args(["data", "import", "nih", "--input", "r", "--out", "o", "--rule", "any"])
    assert "unrecognized arguments: --rule any" in capsys.readouterr().err
    assert parse_args(["data", "import", "vindr", "--input", "r", "--out", "o",
                       "--rule", "any"]).rule == "any"  # fmt: skip


# ------------------------------------------------------------------------- the engine


def _documented(
    out: str,
    n: int,
    *,
    flag: bool = False,
    on: bool = True,
    mode: Literal["a", "b"] = "a",
    names: Sequence[str] = (),
    size: int | None = None,
) -> dict:
    """A function to derive options from.

    Args:
        out: Folder (``None`` never).
        n: How many.
        flag: Turn something on.
        on: Something that is on unless turned off.
        mode: ``a`` or ``b``.
        names: Some names.
        size: A size (default: automatic).
    """
    return {"out": out, "n": n, "flag": flag, "on": on, "mode": mode, "names": names}


def _parser(func, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_function_options(parser, FunctionOptions(func, **kwargs))
    return parser


def test_the_engine_maps_types_to_options() -> None:
    parser = _parser(_documented)
    spec = FunctionOptions(_documented)
    args = parser.parse_args(["--out", "o", "--n", "3"])
    assert spec.call(args) == {"out": "o", "n": 3, "flag": False, "on": True, "mode": "a",
                               "names": ()}  # fmt: skip
    args = parser.parse_args(["--out", "o", "--n", "3", "--flag", "--no-on", "--mode", "b",
                              "--names", "x", "y", "--names", "z"])  # fmt: skip
    assert spec.call(args) == {"out": "o", "n": 3, "flag": True, "on": False, "mode": "b",
                               "names": ("x", "y", "z")}  # fmt: skip
    help_text = " ".join(parser.format_help().split())
    assert "--mode {a,b} a or b (default: a)" in help_text
    assert "--out OUT Folder (unset never)" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--n", "3"])  # --out is required: it has no default


def test_a_parameter_without_an_args_line_cannot_reach_the_command_line() -> None:
    def undocumented(out: str, secret: int = 0) -> None:
        """Do it.

        Args:
            out: Folder.
        """

    with pytest.raises(TypeError, match="'secret' has no Args: line"):
        _parser(undocumented)


def test_a_type_the_command_line_cannot_express_is_refused() -> None:
    def takes_a_callback(out: str, callback: object = None) -> None:
        """Do it.

        Args:
            out: Folder.
            callback: Called back.
        """

    with pytest.raises(TypeError, match="has no command-line form"):
        _parser(takes_a_callback)
    _parser(takes_a_callback, skip=frozenset({"callback"}))  # Python-only: skipped


def test_out_names_a_folder_or_the_file_itself(tmp_path: Path) -> None:
    from medft._io import output_file_in

    assert (
        output_file_in(tmp_path / "d", "m.onnx", suffixes=(".onnx",)) == tmp_path / "d" / "m.onnx"
    )
    assert (tmp_path / "d").is_dir()
    assert output_file_in(tmp_path / "x.onnx", "m.onnx", suffixes=(".onnx",)) == tmp_path / "x.onnx"
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("words", [[], ["quickstart"], ["synth"], ["data", "check"], ["demo"]])
def test_help_of_light_commands_imports_no_torch(words: list[str]) -> None:
    """Reading a signature must not import the heavy stack: `medft quickstart --help` is instant."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom medft.cli import main\n"
        f"try:\n    main({[*words, '--help']!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False False"


def test_old_lr_find_phase_still_works_including_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import functools

    import medft.lr_find

    calls: list[tuple] = []

    @functools.wraps(medft.lr_find.find_learning_rates)  # the command reads its options here
    def fake(*args: object, **kwargs: object) -> list:
        calls.append(kwargs["phases"])
        return []

    monkeypatch.setattr(medft.lr_find, "find_learning_rates", fake)
    monkeypatch.setattr(medft.lr_find, "format_results", lambda results, out: "")
    for old, phases in [("both", ("head", "unfrozen")), ("unfrozen", ("unfrozen",))]:
        assert main(["lr-find", "--config", "c.yaml", "--out", "o", "--phase", old]) == 0
        assert calls.pop() == phases
        assert "medft: note: --phase" in capsys.readouterr().err
    assert main(["lr-find", "--config", "c.yaml", "--out", "o", "--phases", "head"]) == 0
    assert calls.pop() == ("head",)


def test_old_bench_scale_flag_runs_the_scale_benchmark(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import medft.bench

    calls: list[tuple] = []
    monkeypatch.setattr(
        medft.bench, "run_scale_benchmark", lambda out, **kw: calls.append((out, kw)) or []
    )
    argv = ["bench", "--out", str(tmp_path), "--scale", "--scale-sizes", "64", "128", "--keep"]
    assert main(argv) == 0
    assert calls == [(str(tmp_path), {"sizes": [64, 128], "keep": True})]
    assert "medft bench scale" in capsys.readouterr().err
