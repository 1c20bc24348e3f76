"""Command-line options derived from a function's typed signature and its docstring.

A medft command is declared once: by the library function it runs. Each parameter
becomes an option (``n_patients`` -> ``--n-patients``) whose type, choices (``Literal``),
default and help text (the docstring's ``Args:`` line) are read from the function, so
the command line cannot drift from the Python API. medft does this itself rather than
through jsonargparse's ``CLI`` because jsonargparse spells options with underscores
(``--n_patients``), and medft's commands speak the usual kebab-case (docs/architecture.md).

What a command may add on top: a shared *vocabulary* (``rename``: the Python parameter
``manifest_or_path`` is the option ``--input`` in every command) and deprecated spellings
kept working for a release (``deprecated``), each printing one line when used.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import docstring_parser

__all__ = ["FunctionOptions", "add_function_options", "check_required", "option_name"]

_ROLE = re.compile(r":(?:func|class|data|meth|attr|mod):`~?([^`]+)`")
_NONE = type(None)


def option_name(parameter: str) -> str:
    """``n_patients`` -> ``--n-patients``."""
    return "--" + parameter.replace("_", "-")


@dataclass(frozen=True)
class FunctionOptions:
    """How one function's parameters become a command's options.

    Attributes:
        func: The function the command runs, or ``"module:name"`` (imported when first
            needed, so listing the commands imports no torch); its signature and docstring
            declare the options.
        skip: Parameters for Python callers only (callbacks, injected objects).
        rename: Parameter -> option word, where the command line's shared vocabulary differs
            from the Python name (``{"num_workers": "workers"}``).
        positional: Parameters given as positional words rather than ``--options``.
        deprecated: Option word -> old spellings that still work, with a one-line notice.
        help: Parameter -> help text, where the docstring speaks of Python values.
        optional: Required parameters that the command treats as optional (its handler
            decides what their absence means).
    """

    func: Callable[..., Any] | str
    skip: frozenset[str] = frozenset()
    rename: Mapping[str, str] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    deprecated: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()

    @property
    def function(self) -> Callable[..., Any]:
        """The function itself (imported here when given as ``"module:name"``)."""
        if callable(self.func):
            return self.func
        module, _, name = self.func.partition(":")
        return getattr(importlib.import_module(module), name)

    def parameters(self) -> list[inspect.Parameter]:
        """The parameters that become options, in signature order."""
        return [
            p
            for p in inspect.signature(self.function).parameters.values()
            if p.name not in self.skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def dest(self, parameter: str) -> str:
        """The namespace attribute of ``parameter`` (its option word, snake-cased)."""
        return self.rename.get(parameter, parameter)

    def kwargs(self, args: argparse.Namespace) -> dict[str, Any]:
        """The function's keyword arguments, read back from parsed ``args``."""
        return {p.name: _to_python(getattr(args, self.dest(p.name))) for p in self.parameters()}

    def call(self, args: argparse.Namespace) -> Any:
        """Call the function with the options parsed into ``args``."""
        return self.function(**self.kwargs(args))


def add_function_options(parser: argparse.ArgumentParser, spec: FunctionOptions) -> list[str]:
    """Add an option (or positional word) to ``parser`` for each parameter of ``spec.func``.

    Returns:
        Options that are required but have an old spelling too: argparse cannot require
        either of two options, so the caller checks them with :func:`check_required`.

    Raises:
        TypeError: A parameter has a type the command line cannot express, or no line in
            the docstring's ``Args:`` (so a new parameter cannot reach ``--help`` undocumented).
    """
    func = spec.function
    docs = _docstring_params(func)
    either: list[str] = []
    for parameter in spec.parameters():
        name = parameter.name
        text = spec.help.get(name) or docs.get(name)
        if not text:
            raise TypeError(f"{_qualname(func)}: parameter {name!r} has no Args: line")
        required = parameter.default is inspect.Parameter.empty and name not in spec.optional
        default = None if parameter.default is inspect.Parameter.empty else parameter.default
        where = f"{_qualname(func)}.{name}"
        kind = _argparse_kind(_annotation(func, parameter), default, where=where)
        word = spec.dest(name)
        if name in spec.positional:
            parser.add_argument(
                word,
                help=_help(text, None),
                metavar=word.upper(),
                **{k: v for k, v in kind.items() if k not in ("action", "metavar")},
            )
            continue
        old = spec.deprecated.get(word, ())
        if required and old:
            either.append(option_name(word))
        parser.add_argument(
            option_name(word),
            dest=word,
            required=required and not old,
            default=_parser_default(default),
            help=_help(text, None if required or _is_flag(kind) else default)
            + (" (required)" if required and old else ""),  # argparse shows it as optional
            **kind,
        )
        if old:
            parser.add_argument(
                *old,
                dest=word,
                action=_deprecated_action(kind, option_name(word)),
                help=argparse.SUPPRESS,
                **{k: v for k, v in kind.items() if k not in ("action", "metavar")},
            )
    return either


def check_required(
    parser: argparse.ArgumentParser, args: argparse.Namespace, options: Iterable[str]
) -> None:
    """Exit with argparse's usage error when a required option (or its old name) is missing."""
    missing = [o for o in options if getattr(args, o[2:].replace("-", "_"), None) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def _annotation(func: Callable[..., Any], parameter: inspect.Parameter) -> Any:
    """The parameter's type, evaluated alone (others may name types imported for checkers only)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return str
    if isinstance(annotation, str):
        namespace = vars(sys.modules[func.__module__])
        annotation = eval(annotation, namespace)  # the module's own annotation text
    return annotation


def _argparse_kind(annotation: Any, default: Any, *, where: str) -> dict[str, Any]:
    """argparse keywords for a parameter of type ``annotation``."""
    base = _strip_optional(annotation)
    if base is bool:
        return {
            "action": argparse.BooleanOptionalAction if default in (True, None) else "store_true"
        }
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        return {"type": type(choices[0]), "choices": choices}
    if origin in (list, tuple, Sequence, Iterable) or base in (list, tuple):
        items = typing.get_args(base)
        item = _strip_optional(items[0]) if items else str
        kind = _argparse_kind(item, None, where=where)
        if "action" in kind:
            raise TypeError(f"{where}: a sequence of {item} has no command-line form")
        return {"nargs": "+", "action": _Extend, **kind}
    scalar = _scalar_type(base)
    if scalar is None:
        raise TypeError(f"{where}: type {annotation} has no command-line form")
    kind: dict[str, Any] = {"type": scalar}
    if scalar is Path:
        kind["metavar"] = "PATH"
    return kind


def _is_flag(kind: dict[str, Any]) -> bool:
    """A boolean switch (argparse prints its default itself, or it has none worth saying)."""
    return kind.get("action") not in (None, _Extend)


class _Extend(argparse.Action):
    """``--names a b --names c``: the values given replace the default rather than extend it.

    (argparse's own ``extend`` appends to the default: ``--phases head`` would run both.)
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, _extended(parser, namespace, self.dest, values))


def _extended(
    parser: argparse.ArgumentParser, namespace: argparse.Namespace, dest: str, values: Any
) -> list[Any]:
    current = getattr(namespace, dest, None)
    if current is None or current is parser.get_default(dest):
        current = []
    return [*current, *values]


def _strip_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (``None`` is what an absent option means)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not _NONE]
        if len(members) == 1:
            return members[0]
        return Union[tuple(members)]  # noqa: UP007 - rebuilt from parts at run time
    return annotation


def _scalar_type(annotation: Any) -> type | None:
    """The argparse ``type`` for a scalar annotation; ``str`` wins where strings are allowed."""
    if annotation in (int, float, str, Path):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [_scalar_type(a) for a in typing.get_args(annotation)]
        if str in members:
            return str  # paths and URLs alike (a checkpoint may be https://...)
        if Path in members:
            return Path
        if members and all(m is not None for m in members):
            return members[0]
        return str if any(_is_path_like(a) for a in typing.get_args(annotation)) else None
    return str if _is_path_like(annotation) else None


def _is_path_like(annotation: Any) -> bool:
    import os

    return annotation is os.PathLike or typing.get_origin(annotation) is os.PathLike


def _parser_default(default: Any) -> Any:
    """Parser-side default: a list for sequences (argparse's ``extend`` appends to a copy)."""
    return list(default) if isinstance(default, tuple) else default


def _to_python(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _help(text: str, default: Any) -> str:
    """One help line from a docstring description, with the default when it says something."""
    text = _ROLE.sub(r"\1", text).replace("``None``", "unset").replace("``", "")
    text = " ".join(text.split()).replace("%", "%%")
    if default is not None and default is not False and default not in ((), [], ""):
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f"{text.rstrip('.')} (default: {shown})"
    return text


def _docstring_params(func: Callable[..., Any]) -> dict[str, str]:
    parsed = docstring_parser.parse(inspect.getdoc(func) or "")
    return {p.arg_name: p.description or "" for p in parsed.params}


def _qualname(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{getattr(func, '__qualname__', func)}"


def _deprecated_action(kind: dict[str, Any], replacement: str) -> type[argparse.Action]:
    """An action storing like the current option, after a one-line notice on stderr."""
    stores_true = kind.get("action") == "store_true"
    extends = kind.get("action") is _Extend

    class Deprecated(argparse.Action):
        def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
            if stores_true:
                kwargs["nargs"] = 0
            super().__init__(option_strings, dest, **kwargs)

        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            print(
                f"medft: note: {option_string} is now {replacement} (the old name still works "
                "for now)",
                file=sys.stderr,
            )
            if stores_true:
                values = True
            elif extends:
                values = _extended(parser, namespace, self.dest, values)
            setattr(namespace, self.dest, values)

    return Deprecated
