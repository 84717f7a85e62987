"""`main`: parse, run the subcommand, map what it raised to an exit code."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from streaming_rag.exceptions import StreamingRAGError

from ._parser import build_parser, parse_args
from ._settings import setup_logging

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (see `streaming_rag_cli`)."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command not in ("worker", "demo", "serve", "dev"):  # those set up their own logging
        setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except StreamingRAGError as exc:
        print(f"streaming-rag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `streaming-rag ask ... | head -1`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
