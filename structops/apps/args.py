"""The pieces every ``structops`` subcommand shares: the command registry and argument types.

Every argument type raises ``argparse.ArgumentTypeError``, so a bad value
ends the command with argparse's one-line message and exit status 2, before
anything is computed.
"""

from __future__ import annotations

import argparse
import math
import os

__all__ = [
    "CommandError",
    "parse",
    "command",
    "arg",
    "COMMANDS",
    "int_at_least",
    "positive_int",
    "finite_float",
    "padding_arg",
    "output_dir",
    "output_file",
]

#: name -> (help, arguments, function); filled by the ``@command`` decorator.
COMMANDS: dict = {}


class CommandError(Exception):
    """An error meant for the user: printed without a traceback, exit status 2."""


def arg(*flags, **kwargs):
    """An ``argparse`` argument specification for :func:`command`."""
    return flags, kwargs


def command(name: str, help: str, *arguments):
    """Register ``func(args) -> int | None`` as the subcommand ``name``."""

    def decorate(func):
        COMMANDS[name] = (help, arguments, func)
        return func

    return decorate


def parse(parser, argv):
    """``parser.parse_args(argv)``, or the exit status argparse chose (2 for bad arguments, 0 for --help).

    The ``--out`` folders (:func:`output_dir`) are created once every argument
    has been read, so a usage error leaves nothing behind.
    """
    try:
        args = parser.parse_args(argv)
        _create_output_dirs(parser, args)
        return args, None
    except SystemExit as exc:
        return None, int(exc.code or 0)


def int_at_least(minimum: int, at_most: int | None = None):
    """An argument type: an integer in ``[minimum, at_most]``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if v < minimum or (at_most is not None and v > at_most):
            bounds = f">= {minimum}" if at_most is None else f"in [{minimum}, {at_most}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}; got {v}")
        return v

    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)


def finite_float(positive: bool = False, nonnegative: bool = False):
    """An argument type: a finite real number, optionally > 0 or >= 0."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
        if not math.isfinite(v) or (positive and v <= 0) or (nonnegative and v < 0):
            what = "a positive" if positive else "a non-negative" if nonnegative else "a finite"
            raise argparse.ArgumentTypeError(f"expected {what} finite number; got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


def padding_arg(text: str):
    """``--padding`` values: a mode name or a non-negative integer."""
    modes = ("same", "valid", "full", "circular")
    if text in modes:
        return text
    try:
        p = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid padding {text!r}; expected one of {', '.join(modes)} or a non-negative integer"
        ) from None
    if p < 0:
        raise argparse.ArgumentTypeError(f"padding must be non-negative; got {p}")
    return p


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


class OutputDir(str):
    """The text of an ``--out`` folder that :func:`output_dir` checked; :func:`parse` creates it."""


def output_dir(text: str) -> str:
    """A folder to write into: it exists and is writable, or it can be created.

    Nothing is created here: argparse converts a string default before it
    reports an unknown argument, so a command that ends with a usage error
    would leave its default folder behind. :func:`parse` creates the folders
    once every argument is read.
    """
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not _writable_dir(parent):
        raise argparse.ArgumentTypeError(f"cannot write into {text!r}: {parent!r} is not writable")
    return OutputDir(text)


def _create_output_dirs(parser, args) -> None:
    """Create every :class:`OutputDir` of a parsed namespace, or end with argparse's one-line error."""
    for value in vars(args).values():
        if isinstance(value, OutputDir):
            try:
                os.makedirs(value, exist_ok=True)
            except OSError as exc:
                parser.error(f"cannot create {str(value)!r}: {exc.strerror}")


def output_file(text: str) -> str:
    """A file to write: its folder exists and is writable, and it is not a folder itself."""
    path = os.path.abspath(text)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; expected a file name")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    return text
