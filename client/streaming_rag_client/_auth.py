"""Access control for the HTTP bridge: the user's own `authorize` callback and signed capability
links (`Capabilities`), combined by `Gate`.

Actions: `submit` (no job id), `watch` (the event stream), `status` and `cancel`.

`authorize(request, action, job_id)` (sync or async) returns True to allow, False to refuse
(403), or raises `Unauthorized` (401) / `Forbidden` (403) with a message of its own; anything
else it raises propagates (500).

A capability token is `<exp>.<scope>.<sig>`: `exp` the expiry in Unix seconds, `scope`
`watch` (watch and status) or `cancel` (watch, status and cancel: the submitter's token), `sig`
the unpadded base64url HMAC-SHA256 under the bridge's secret of the job id, scope and expiry.
So a token grants one job, one scope, until one time, and nobody without the secret can make or
widen one. It travels as `?token=` (what an `EventSource` can send) or `Authorization: Bearer`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from starlette.requests import Request

from streaming_rag.exceptions import Forbidden, InvalidRequest, Unauthorized

__all__ = [
    "ACTIONS",
    "SCOPES",
    "SECRET_ENV",
    "Action",
    "Authorize",
    "Capabilities",
    "Gate",
    "presented_token",
    "secret_from_env",
]

Action = Literal["submit", "watch", "status", "cancel"]
ACTIONS: tuple[Action, ...] = ("submit", "watch", "status", "cancel")
#: What each token scope grants.
SCOPES: dict[str, frozenset[str]] = {
    "watch": frozenset({"watch", "status"}),
    "cancel": frozenset({"watch", "status", "cancel"}),
}
SECRET_ENV = "STREAMING_RAG_SECRET"
MIN_SECRET_BYTES = 16
_DOMAIN = b"streaming-rag capability v1"

#: `authorize(request, action, job_id) -> bool` (or an awaitable of it).
Authorize = Callable[[Request, str, "str | None"], "bool | Awaitable[bool]"]


def secret_from_env() -> str | None:
    """`$STREAMING_RAG_SECRET`, or None when it is unset or empty."""
    return os.environ.get(SECRET_ENV) or None


def presented_token(request: Request) -> str | None:
    """The capability token of `request`: `?token=`, else an `Authorization: Bearer` value."""
    token = request.query_params.get("token")
    if token:
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Capabilities:
    """Mints and checks capability tokens under one secret (never shown by `repr`)."""

    def __init__(self, secret: str | bytes, *, ttl_s: float) -> None:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(key) < MIN_SECRET_BYTES:
            raise InvalidRequest(
                f"the bridge's secret must be at least {MIN_SECRET_BYTES} bytes "
                '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        if not ttl_s > 0:
            raise InvalidRequest(f"token_ttl_s must be > 0 seconds, got {ttl_s}")
        self._key = key
        self.ttl_s = float(ttl_s)

    def __repr__(self) -> str:
        return f"Capabilities(secret=***, ttl_s={self.ttl_s})"

    def _sign(self, job_id: str, scope: str, exp: int) -> str:
        message = b"\n".join([_DOMAIN, job_id.encode(), scope.encode(), str(exp).encode()])
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def mint(self, job_id: str, scope: str, *, now: float | None = None) -> tuple[str, int]:
        """A token granting `scope` on `job_id` for `ttl_s` from `now`, and its expiry."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
        exp = int((time.time() if now is None else now) + self.ttl_s)
        return f"{exp}.{scope}.{self._sign(job_id, scope, exp)}", exp

    def check(
        self, token: str | None, job_id: str, action: str, *, now: float | None = None
    ) -> None:
        """Return if `token` grants `action` on `job_id` now; else raise `Unauthorized` (no
        token) or `Forbidden` (a token that is malformed, tampered with, for another job,
        expired, or of a scope that does not grant `action`). Messages never quote it."""
        if not token:
            raise Unauthorized(
                f"{action} needs this job's token: the ?token= of the link POST /answers "
                "returned, or an Authorization: Bearer header"
            )
        exp_text, _, rest = token.partition(".")
        scope, _, sig = rest.partition(".")
        valid = exp_text.isdigit() and len(exp_text) <= 12 and scope in SCOPES
        expected = self._sign(job_id, scope, int(exp_text)) if valid else ""
        if not valid or not hmac.compare_digest(expected.encode(), sig.encode()):
            raise Forbidden("the token does not grant access to this job")
        if int(exp_text) <= (time.time() if now is None else now):
            raise Forbidden("the token has expired: submit again for a fresh link")
        if action not in SCOPES[scope]:
            raise Forbidden(f"a {scope} token does not grant {action}; the submitter's does")


class Gate:
    """Every route's access check: `authorize` (when given) and then, for a job, the
    capability token (when a secret is set); both must allow."""

    def __init__(self, authorize: Authorize | None, capabilities: Capabilities | None) -> None:
        self.authorize = authorize
        self.capabilities = capabilities

    @property
    def open(self) -> bool:
        """True when nothing restricts who may submit, watch and cancel."""
        return self.authorize is None and self.capabilities is None

    async def check(self, request: Request, action: Action, job_id: str | None) -> None:
        """Return if `request` may do `action` on `job_id`; else raise `Unauthorized` or
        `Forbidden`."""
        if self.authorize is not None:
            verdict = self.authorize(request, action, job_id)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict is not True:
                raise Forbidden(f"not allowed to {action}" + (" this job" if job_id else ""))
        if self.capabilities is not None and job_id is not None:
            self.capabilities.check(presented_token(request), job_id, action)
