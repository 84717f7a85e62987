"""The `streaming-rag` command line.

The queue subcommands (`worker`, `ask`, `watch`, `replay`, `status`, `demo`) are added with the
queue; the CLI is the one place allowed to import both `worker` and `client`, and it imports
them lazily so that `streaming_rag` itself never needs Redis.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streaming-rag",
        description="Stream RAG answers token by token, in process or through a job queue.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0  # pragma: no cover - every subcommand returns on its own


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
