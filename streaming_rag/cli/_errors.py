"""`CLIError`: a problem the CLI reports in one line."""

from __future__ import annotations

from ..exceptions import StreamingRAGError

__all__ = ["CLIError"]


class CLIError(StreamingRAGError):
    """A problem the CLI reports in one line (exit code 2)."""
