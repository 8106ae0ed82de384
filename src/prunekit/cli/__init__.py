"""The command line: a thin layer over :mod:`prunekit.api`. Errors print one line and exit
non-zero.

The method flags (--damp, --blocksize, --obs-k, ...) are not written here: they come from the
fields of the registered methods' configs (:func:`prunekit.methods.base.setting`), so a new
method with new settings needs no edit of this package."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from transformers.utils import logging as hf_logging

from ..distributed import launched
from ..errors import PrunekitError, UsageError
from .commands import COMMANDS, DISTRIBUTED_COMMANDS
from .parser import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, build_parser


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _quiet_transformers(verbose: bool) -> None:
    """transformers' own weight-loading bars would interleave with ours; keep its warnings."""
    if not verbose:
        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors print one line to stderr)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_transformers(args.verbose)
    hint = "" if args.verbose else " (rerun with --verbose for the traceback)"
    try:
        if args.command not in DISTRIBUTED_COMMANDS and launched():
            raise UsageError(f"prunekit {args.command} runs in one process: start it without "
                             f"torchrun (under torchrun: {', '.join(DISTRIBUTED_COMMANDS)})")
        return COMMANDS[args.command](args)
    except PrunekitError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"prunekit: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader of stdout went away (`prunekit methods | head`)
        with contextlib.suppress(OSError, ValueError):  # and Python's flush at exit with it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        resume = ("; the finished blocks are kept: rerun the same command to resume"
                  if getattr(args, "stream", False) else "")
        print(f"prunekit: interrupted; no output was written{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the CLI's outer boundary: anything else is a bug or an OS error
        if args.verbose:
            traceback.print_exc()
        print(f"prunekit: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_FAILURE
