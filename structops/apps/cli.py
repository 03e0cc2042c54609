"""The ``structops`` command line: ``structops COMMAND [options]`` (or ``python -m structops``).

Commands: ``spectrum`` (:mod:`structops.apps.spectrum`), ``layers``
(:mod:`structops.apps.layers`), ``demo``
(:mod:`structops.apps.demo`), ``regularize`` (:mod:`structops.apps.regularize`),
``landscape`` (:mod:`structops.apps.landscape`) and ``convex``
(:mod:`structops.apps.convex`). Heavy modules (NumPy,
SciPy, PyLops) are imported inside the commands, so ``structops --help``
stays fast. Errors meant for the user (bad arguments, a layer that does not
fit the memory limit) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import demo as _demo  # noqa: F401  (registers the command)
from . import layers as _layers  # noqa: F401
from . import spectrum as _spectrum  # noqa: F401
from .args import COMMANDS, CommandError, parse

__all__ = ["main", "build_parser"]


#: name -> (help, module): subcommands whose module parses its own arguments (``module.main(argv)``).
_DELEGATED = {
    "regularize": (
        "reproduce Guo (2019) Figure 4.1: exact Frobenius spectrum regularisation vs the paper's schedule",
        "structops.apps.regularize",
    ),
    "landscape": (
        "extended vs conventional convolution: loss landscapes and training trajectories (Siahkoohi, Louboutin and Herrmann)",
        "structops.apps.landscape",
    ),
    "convex": (
        "Ergen and Pilanci (2021): the certified convex optimum of a two-layer ReLU CNN against SGD",
        "structops.apps.convex",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``structops`` argument parser, one subparser per registered command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="structops",
        description="Convolution layers as matrix-free structured linear operators.",
    )
    parser.add_argument("--version", action="version", version=f"structops {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, arguments, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(_func=func)
    for name, (help_text, _) in _DELEGATED.items():  # listed here, parsed by their own module
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv=None) -> int:
    """Entry point of ``structops`` and ``python -m structops``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        return int(importlib.import_module(_DELEGATED[argv[0]][1]).main(argv[1:]) or 0)
    parser = build_parser()
    args, status = parse(parser, argv)
    if args is None:
        return status
    func = getattr(args, "_func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        status = func(args)
    except CommandError as exc:
        print(f"structops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # structops' MemoryLimitError: the estimate and the limit
        print(f"structops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0 if status is None else int(status)
