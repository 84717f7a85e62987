"""Server URLs: the one parser every part of streaming-rag uses, and masking their secrets.

No I/O and no redis import: `parse_url` turns a URL into a `ServerSpec`, whose
`connection_kwargs()` / `sentinel_kwargs()` are the keyword arguments the worker and the client
hand to redis-py. Accepted forms (the same for worker, client, HTTP bridge and CLI)::

    redis://[[username]:password@]host[:port][/db]            TCP, port 6379, db 0 by default
    rediss://[[username]:password@]host[:port][/db]           the same over TLS
    unix://[[username]:password@]/path/to/socket[?db=N]       a Unix socket
    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db]
    rediss+sentinel://...                                     the same, TLS to the primary
    redis+cluster://[[username]:password@]host[:port][,host[:port]...]   a Redis Cluster
    rediss+cluster://...                                      the same over TLS

A cluster URL lists seed nodes (any reachable ones: the client learns the whole cluster from
the first that answers); it takes no db (a cluster has only db 0) and is accepted only where
the per-job keys live (``events_url``), never for the queue: arq cannot run on a cluster.

A sentinel URL lists the sentinels (port 26379 by default) and names the monitored service; the
primary is asked from the sentinels at every (re)connection, so connections follow it through a
failover. The userinfo credentials are the data server's (the primary's); the sentinels are
asked without a password unless ``?sentinel_password=`` is given, and over plain TCP even with
``rediss+sentinel://`` (TLS is for the data connections, as in redis-py and arq).

Query options: ``password`` (instead of the userinfo's; not both), ``db`` (instead of the
path's; not both) and, for sentinel URLs only, ``sentinel_password``. Percent-encode reserved
characters in user names and passwords (``@`` as ``%40``, ``/`` as ``%2F``, ``#`` as ``%23``,
``+`` as ``%2B`` in a query value).

Every refusal raises `InvalidRequest` naming the URL with its secrets masked (`redact_url`) and
the accepted forms; a message never holds a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..exceptions import InvalidRequest

__all__ = ["ServerSpec", "parse_url", "redact_url"]

STANDALONE_SCHEMES = {"redis": False, "rediss": True}  # scheme -> TLS
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
QUERY_OPTIONS = ("password", "db", "sentinel_password")
MASK = "***"

ACCEPTED = (
    "redis://[[user]:password@]host[:port][/db], rediss://... (TLS), "
    "unix://[[user]:password@]/path/to/socket[?db=N], "
    "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db] "
    "(rediss+sentinel://... for TLS), "
    "redis+cluster://[[user]:password@]host[:port][,host[:port]...] (rediss+cluster://... for "
    "TLS); query options: password, db, sentinel_password"
)

# `password=` / `sentinel_password=` (any key ending in "password") in a query: the value
_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;])[^?&;=]*password=)[^&;#]*")


def redact_url(url: str) -> str:
    """`url` with every secret replaced by ``***``: the password of the userinfo (whatever
    follows the first ``:`` before the last ``@``) and the value of any ``password=`` or
    ``sentinel_password=`` query option. Never raises, also for malformed URLs (a missing
    scheme, an unencoded ``@`` or ``/`` in a password): it masks too much rather than too
    little. A user name is kept."""
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, str(url))
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    creds, at, tail = rest.rpartition("@")
    if not at or ":" not in creds:
        return text
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:{MASK}@{tail}"


@dataclass(frozen=True, repr=False)
class ServerSpec:
    """Where a server is and how to log in, parsed from a URL by `parse_url`.

    `kind` is ``"standalone"`` (`host` and `port`, or the Unix socket `path`), ``"sentinel"``
    (`sentinels`: (host, port) pairs, and `service_name`) or ``"cluster"`` (`nodes`: the seed
    nodes' (host, port) pairs; `db` is always 0). `db` is the database index,
    `username` / `password` the data server's credentials, `sentinel_password` the sentinels'
    (sentinel only), `tls` whether data connections use TLS. `repr()` and `str()` mask the
    passwords; `str()` is the canonical URL with ``***`` for each password.
    """

    kind: Literal["standalone", "sentinel", "cluster"]
    host: str | None = None
    port: int | None = None
    path: str | None = None
    db: int = 0
    sentinels: tuple[tuple[str, int], ...] = ()
    nodes: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        user = quote(self.username or "", safe="")
        creds = f"{user}:{MASK}@" if self.password is not None else (f"{user}@" if user else "")
        query = [f"sentinel_password={MASK}"] if self.sentinel_password is not None else []
        if self.kind == "sentinel":
            scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
            hosts = ",".join(f"{_netloc_host(h)}:{p}" for h, p in self.sentinels)
            where = f"{hosts}/{quote(self.service_name or '', safe='')}/{self.db}"
        elif self.kind == "cluster":
            scheme = "rediss+cluster" if self.tls else "redis+cluster"
            where = ",".join(f"{_netloc_host(h)}:{p}" for h, p in self.nodes)
        elif self.path is not None:
            scheme, where = "unix", quote(self.path)
            query.append(f"db={self.db}")
        else:
            scheme = "rediss" if self.tls else "redis"
            where = f"{_netloc_host(self.host or DEFAULT_HOST)}:{self.port}/{self.db}"
        return f"{scheme}://{creds}{where}" + (f"?{'&'.join(query)}" if query else "")

    def __repr__(self) -> str:
        return f"ServerSpec({str(self)!r})"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py client of the data server (`redis.Redis(...)`,
        or `Sentinel(...)` / `master_for(...)` connection arguments): the address (standalone
        only), ``db`` (not for a cluster), the credentials when given, ``ssl=True`` for TLS."""
        kwargs: dict[str, Any] = {} if self.kind == "cluster" else {"db": self.db}
        if self.kind == "standalone":
            if self.path is not None:
                kwargs["unix_socket_path"] = self.path
            else:
                kwargs.update(host=self.host, port=self.port)
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the connections to the sentinels (redis-py's
        `Sentinel(sentinel_kwargs=...)`): the sentinel password when one was given."""
        if self.sentinel_password is None:
            return {}
        return {"password": self.sentinel_password}


def parse_url(url: str) -> ServerSpec:
    """The `ServerSpec` of `url` (forms in the module docstring). Raises `InvalidRequest`
    naming the URL with its passwords masked and the accepted forms, for: no scheme or an
    unknown one (``127.0.0.1:6379``, ``http://...``), a port that is not 1-65535, a db that
    is not a non-negative integer, a sentinel URL without hosts or service name, an unknown or
    repeated query option, a password or db given twice, a fragment."""
    if not isinstance(url, str):
        raise InvalidRequest(f"a Redis URL must be a string, got {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _invalid(url, "it has no scheme")
    tls = {**STANDALONE_SCHEMES, **SENTINEL_SCHEMES, **CLUSTER_SCHEMES}.get(scheme)
    if tls is None and scheme != "unix":
        raise _invalid(url, "unknown scheme")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _invalid(url, "it cannot be split into host, path and query") from None
    if parts.fragment or url.endswith("#"):
        raise _invalid(url, "a '#' starts a fragment: percent-encode it as %23")
    options = _query(url, parts.query)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    username = (unquote(user) or None) if at else None
    password = (unquote(secret) or None) if at and colon else None
    if password is not None and "password" in options:
        raise _invalid(url, "the password is given twice (userinfo and ?password=)")
    password = options.get("password") or password
    common: dict[str, Any] = {"username": username, "password": password}
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(url, hosts, parts.path, options, tls=bool(tls), **common)
    if "sentinel_password" in options:
        raise _invalid(url, "sentinel_password is for redis+sentinel:// URLs only")
    if scheme in CLUSTER_SCHEMES:
        if not hosts:
            raise _invalid(url, "no cluster node")
        if parts.path.strip("/") or "db" in options:
            raise _invalid(url, "a cluster URL takes no db: a cluster has only db 0")
        nodes = tuple(_hosts(url, hosts, DEFAULT_PORT))
        return ServerSpec("cluster", nodes=nodes, tls=bool(tls), **common)
    if scheme == "unix":
        if hosts:
            raise _invalid(url, "a unix:// URL takes no host: unix:///path/to/socket")
        if not parts.path:
            raise _invalid(url, "no socket path")
        db = _db(url, options.get("db", "0"))
        return ServerSpec("standalone", path=unquote(parts.path), db=db, **common)
    (host, port), *more = _hosts(url, hosts or DEFAULT_HOST, DEFAULT_PORT)
    if more:
        raise _invalid(url, "several hosts: only sentinel and cluster URLs list several")
    db = _path_db(url, parts.path.strip("/"), options)
    return ServerSpec("standalone", host=host, port=port, db=db, tls=bool(tls), **common)


def _sentinel(
    url: str, hosts: str, path: str, options: dict[str, str], *, tls: bool, **common: Any
) -> ServerSpec:
    if not hosts:
        raise _invalid(url, "no sentinel host")
    sentinels = tuple(_hosts(url, hosts, DEFAULT_SENTINEL_PORT))
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise _invalid(url, "no service name: .../service_name[/db]")
    return ServerSpec(
        "sentinel",
        db=_path_db(url, db_text, options),
        sentinels=sentinels,
        service_name=unquote(service),
        sentinel_password=options.get("sentinel_password") or None,
        tls=tls,
        **common,
    )


def _hosts(url: str, text: str, default_port: int) -> list[tuple[str, int]]:
    """``host[:port][,host[:port]...]`` (IPv6 in brackets) as (host, port) pairs."""
    pairs = []
    for item in text.split(","):
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise _invalid(url, "a bracketed IPv6 host is not closed by ']'")
            port_text = rest[1:] if rest else ""
        else:
            host, _, port_text = item.partition(":")
        if not host or any(c.isspace() for c in host):
            raise _invalid(url, "an empty host, or a host with spaces")
        port = default_port
        if port_text or item.endswith(":"):
            if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
                raise _invalid(url, "a port is not a number from 1 to 65535")
            port = int(port_text)
        pairs.append((host.lower(), port))
    return pairs


def _path_db(url: str, text: str, options: dict[str, str]) -> int:
    if text and "db" in options:
        raise _invalid(url, "the db is given twice (path and ?db=)")
    return _db(url, options.get("db", text or "0"))


def _db(url: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _invalid(url, "the db is not a non-negative integer")
    return int(text)


def _query(url: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        # a key is named only when the masked URL shows it (else it may be part of a password)
        name = repr(key) if key in redact_url(url) else "(masked)"
        if key not in QUERY_OPTIONS:
            raise _invalid(url, f"unknown query option {name}")
        if key in options:
            raise _invalid(url, f"query option {name} is given twice")
        options[key] = value
    return options


def _netloc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _invalid(url: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"invalid Redis URL {redact_url(url)!r}: {reason}. Accepted forms: {ACCEPTED}"
    )
