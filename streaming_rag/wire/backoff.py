"""`Backoff`: capped exponential backoff with jitter, the one retry policy of the worker and the
client (no I/O: the callers sleep and retry)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["TRANSIENT_REPLIES", "Backoff"]

#: Error replies a server gives while it restarts or changes role (the command did not run):
#: retried like a lost connection by the worker and the client. ``UNBLOCKED`` answers a
#: blocked read of a primary being demoted.
TRANSIENT_REPLIES = ("UNBLOCKED", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


class Backoff:
    """Delays of `initial_s`, doubling up to `cap_s`, each scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so many retrying processes do not stampede a server that has
    just come back. `deadline_s` (None: none) bounds the whole series: `expired` says when the
    time since the first delay of the series is past it. `reset()` starts a new series."""

    def __init__(
        self,
        *,
        initial_s: float = 0.05,
        cap_s: float = 1.0,
        jitter: float = 0.2,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError(f"need 0 < initial_s <= cap_s, got {initial_s} and {cap_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.jitter = jitter
        self.deadline_s = deadline_s
        self._clock = clock
        self._rand = rand
        self._attempt = 0
        self._started: float | None = None

    @property
    def attempts(self) -> int:
        """Delays handed out since the last `reset()`."""
        return self._attempt

    @property
    def elapsed_s(self) -> float:
        """Seconds since the first delay of this series (0 before it)."""
        return 0.0 if self._started is None else self._clock() - self._started

    @property
    def expired(self) -> bool:
        """Whether the series has run past `deadline_s`."""
        return self.deadline_s is not None and self.elapsed_s >= self.deadline_s

    def next_delay(self) -> float:
        """The next delay, in seconds."""
        if self._started is None:
            self._started = self._clock()
        base = min(self.cap_s, self.initial_s * 2 ** min(self._attempt, 30))
        self._attempt += 1
        return float(base * (1 + self.jitter * (2 * self._rand() - 1)))

    def reset(self) -> None:
        """The operation succeeded: the next failure starts a new series."""
        self._attempt = 0
        self._started = None
