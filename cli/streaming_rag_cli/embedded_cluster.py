"""A real Valkey Cluster on 127.0.0.1 built from `EmbeddedValkey` nodes, for tests.

With no valkey-cli, the cluster is formed over redis-py as valkey-cli would: ``CLUSTER
ADDSLOTSRANGE`` (16384 slots split evenly over the masters), ``CLUSTER MEET``, ``CLUSTER
REPLICATE``, then a bounded wait until every node says ``cluster_state:ok`` and all running
nodes report the same slot owners. Slots move by the classic IMPORTING/MIGRATING/MIGRATE
procedure, which a test can hold half-way (`begin_migration` ... `finish_migration`) to see
ASK redirects; `kill_master` + `wait_for_failover` exercise an automatic failover.

Every node binds 127.0.0.1 only, on a free client port and a free cluster bus port (given
explicitly: port+10000 may not exist). Node config: ``cluster-enabled yes``,
``cluster-config-file nodes.conf`` (in the node's data dir), ``appendonly no``,
``cluster-node-timeout`` = `node_timeout_ms`, ``cluster-replica-validity-factor 0`` (a
replica may always fail over) and ``cluster-require-full-coverage`` = `require_full_coverage`
(default yes, as Valkey: while a dead master's slots are unserved the whole cluster refuses
commands until its replica takes over; False keeps the other slots serving).

Every wait is bounded by a deadline and raises `CLIError` naming what was not reached.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
import redis.cluster
from redis.crc import key_slot as _crc_key_slot

from streaming_rag.exceptions import CLIError
from streaming_rag_cli.embedded import HOST, PORT_RETRIES, EmbeddedValkey, _free_port

__all__ = ["SLOTS", "ClusterNode", "EmbeddedCluster", "SlotMigration"]

SLOTS = 16384
_POLL_S = 0.05
_T = TypeVar("_T")
_CONFIG = {  # + cluster-port, cluster-node-timeout, cluster-require-full-coverage
    "cluster-enabled": "yes",
    "cluster-config-file": "nodes.conf",
    "cluster-replica-validity-factor": "0",
}


@dataclass(frozen=True)
class ClusterNode:
    """One node as the cluster sees it at the moment it was asked (a snapshot).

    `role` is ``"master"`` or ``"replica"``; `master_id` is the master of a replica (None
    for a master); `slots` the (first, last) ranges a master owns; `failed` that the node is
    flagged ``fail``/``fail?`` by the node asked; `running` that its process is alive.
    """

    host: str
    port: int
    node_id: str
    role: str
    master_id: str | None
    slots: tuple[tuple[int, int], ...]
    failed: bool
    running: bool


@dataclass(frozen=True)
class SlotMigration:
    """A slot left half-way by `EmbeddedCluster.begin_migration`: IMPORTING on `target`,
    MIGRATING on `source`. Until `finish_migration`, the source answers ``ASK`` for keys of
    the slot it no longer holds."""

    slot: int
    source: ClusterNode
    target: ClusterNode


class EmbeddedCluster:
    """`masters` masters with `replicas` replicas each, on 127.0.0.1, owned by this object.

    Construction starts nothing; `start()` (or ``with``) starts all nodes and forms the
    cluster, or on any failure stops every node it started and raises. `stop()` stops every
    node (idempotent, also after a failed start). Nodes are identified by port: methods
    taking a `ClusterNode` accept any snapshot of it.

    Args:
        masters: number of masters (>= 1; 3 is the smallest cluster that survives a master).
        replicas: replicas per master (0 or 1).
        node_timeout_ms: ``cluster-node-timeout``; a killed master is failed over about
            ``node_timeout_ms`` + 0.5..1 s after it dies.
        require_full_coverage: ``cluster-require-full-coverage`` (see the module doc).
        data_dir: parent of the nodes' data dirs (``node-<i>``, kept); None: each node uses
            a temporary dir removed by `stop()`.
        timeout_s: bound of `start()`'s wait for a formed, agreeing cluster.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 1000,
        require_full_coverage: bool = True,
        data_dir: Path | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if masters < 1 or replicas not in (0, 1) or node_timeout_ms < 100:
            raise ValueError("EmbeddedCluster needs masters >= 1, replicas 0/1, timeout >= 100")
        self._n_masters = masters
        self._n_replicas = replicas
        self._data_dir = data_dir
        self._config = {
            "cluster-node-timeout": str(node_timeout_ms),
            "cluster-require-full-coverage": "yes" if require_full_coverage else "no",
        }
        self._timeout_s = timeout_s
        self._servers: list[EmbeddedValkey] = []
        self._bus_ports: list[int] = []
        self._seeds: list[int] = []

    def start(self) -> EmbeddedCluster:
        """Start every node, form the cluster and wait until it is stable (see
        `wait_stable`); return self. On failure every started node is stopped and the error
        (`CLIError` for a node that does not start or a cluster that does not form within
        `timeout_s`) is raised. `RuntimeError` when already started."""
        if self._servers:
            raise RuntimeError("the embedded cluster is already started")
        try:
            for index in range(self._n_masters * (1 + self._n_replicas)):
                self._start_node(index)
            self._form()
        except BaseException:
            self.stop()
            raise
        self._seeds = [s.port for s in self._servers[: self._n_masters]]
        return self

    def stop(self) -> None:
        """Stop every node this object started (SIGTERM, then SIGKILL). Idempotent."""
        servers, self._servers, self._bus_ports = self._servers, [], []
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop(timeout_s=3.0)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``: the masters as of `start()`
        (seed nodes; a seed that is down later is skipped by cluster clients)."""
        if not self._seeds:
            raise RuntimeError("the embedded cluster is not started")
        return "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in self._seeds)

    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        """The seed nodes of `url` for ``redis.cluster.RedisCluster(startup_nodes=...)``
        (the asyncio client takes ``redis.asyncio.cluster.ClusterNode(host, port)``)."""
        return [
            redis.cluster.ClusterNode(HOST, port)  # type: ignore[no-untyped-call]
            for port in self._seeds
        ]

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node, as a running node (a master first) sees them now, by port."""
        return self._view()

    def masters(self) -> list[ClusterNode]:
        """The masters owning slots and not flagged failed, ordered by their first slot."""
        owners = [n for n in self._view() if n.role == "master" and n.slots and not n.failed]
        return sorted(owners, key=lambda n: n.slots[0][0])

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The replicas of `master` (by node id) in the current view."""
        return [n for n in self._view() if n.master_id == master.node_id]

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The master owning `slot` per the current view; `LookupError` if none does."""
        for node in self._view():
            if node.role == "master" and any(a <= slot <= b for a, b in node.slots):
                return node
        raise LookupError(f"no master owns slot {slot}")

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        """The hash slot of `key` (CRC16 of the ``{hash tag}`` or whole key, mod 16384)."""
        return _crc_key_slot(key.encode() if isinstance(key, str) else key)

    def begin_migration(self, slot: int, target: ClusterNode) -> SlotMigration:
        """``CLUSTER SETSLOT slot IMPORTING`` on `target`, then ``MIGRATING`` on the owner.
        No key is moved yet (see `move_keys`). `ValueError` if `target` owns the slot."""
        source = self.node_for_slot(slot)
        if source.port == target.port:
            raise ValueError(f"slot {slot} already lives on {HOST}:{target.port}")
        self._cmd(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        self._cmd(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        return SlotMigration(slot, source, target)

    def move_keys(self, migration: SlotMigration, keys: Sequence[bytes | str] | None = None) -> int:
        """``MIGRATE`` `keys` (None: every key left in the slot, batch by batch via
        ``CLUSTER GETKEYSINSLOT``) from source to target; return how many were sent."""
        source, port, moved = migration.source, migration.target.port, 0
        getkeys = ("CLUSTER", "GETKEYSINSLOT", migration.slot, 100)
        while batch := list(keys) if keys is not None else self._cmd(source, *getkeys):
            self._cmd(source, "MIGRATE", HOST, port, "", 0, 5000, "KEYS", *batch)
            moved += len(batch)
            if keys is not None:
                break
        return moved

    def finish_migration(self, migration: SlotMigration, timeout_s: float = 10.0) -> None:
        """Move the remaining keys, then ``CLUSTER SETSLOT slot NODE target`` on the target,
        the source and every other master; wait (`timeout_s`) until the cluster agrees."""
        self.move_keys(migration)
        target_id = migration.target.node_id
        others = [m for m in self._view() if m.role == "master" and m.running and not m.failed]
        ordered = [migration.target, migration.source]
        ordered += [m for m in others if m.port not in {n.port for n in ordered}]
        for node in ordered:
            self._cmd(node, "CLUSTER", "SETSLOT", migration.slot, "NODE", target_id)
        self.wait_stable(timeout_s)

    def migrate_slot(self, slot: int, target: ClusterNode, timeout_s: float = 10.0) -> None:
        """Move `slot` with all its keys to `target`: `begin_migration` + `finish_migration`."""
        self.finish_migration(self.begin_migration(slot, target), timeout_s)

    def kill_master(self, node: ClusterNode) -> None:
        """SIGKILL the master `node` (its port and data dir are kept for `restart_node`).
        `ValueError` when `node` is not a master now."""
        if self._node(node.port).role != "master":
            raise ValueError(f"{HOST}:{node.port} is not a master")
        self._server(node.port).kill()

    def wait_for_failover(self, old_master: ClusterNode, timeout_s: float = 15.0) -> ClusterNode:
        """Wait until a former replica of `old_master` is a master owning its slots and the
        cluster is stable again (`wait_stable`); return that node. `CLIError` on timeout."""

        def promoted() -> ClusterNode | None:
            for node in self._view():
                if node.port != old_master.port and node.slots == old_master.slots:
                    return node if node.role == "master" else None
            return None

        deadline = time.monotonic() + timeout_s
        node = self._wait(promoted, deadline, f"no replica of {HOST}:{old_master.port} promoted")
        self.wait_stable(max(deadline - time.monotonic(), 0.1))
        return node

    def failover(self, replica: ClusterNode, timeout_s: float = 15.0) -> ClusterNode:
        """A planned switch: ``CLUSTER FAILOVER`` on `replica` (its master running, then
        demoted to its replica); wait as `wait_for_failover` does; return the new master."""
        master = next(n for n in self._view() if n.node_id == replica.master_id)
        self._cmd(replica, "CLUSTER", "FAILOVER")
        return self.wait_for_failover(master, timeout_s)

    def restart_node(self, node: ClusterNode, timeout_s: float = 15.0) -> None:
        """Start a killed node again (same port, same nodes.conf: it rejoins, as a replica if
        it was failed over) and wait until the cluster is stable with it."""
        self._server(node.port).start()
        self.wait_stable(timeout_s)

    def wait_stable(self, timeout_s: float = 10.0) -> None:
        """Wait until every running node says ``cluster_state:ok``, knows every node, sees
        the same owner for every slot (all 16384 covered, no node flagged failed) and every
        running replica's link to its master is up. `CLIError` on timeout."""
        deadline = time.monotonic() + timeout_s
        self._wait(self._stable, deadline, "the cluster did not become stable")

    def _start_node(self, index: int) -> None:
        """Start node `index` on a free client port and bus port (new ones on a clash)."""
        for attempt in range(PORT_RETRIES + 1):
            port, bus = _free_port(), _free_port()
            data = None if self._data_dir is None else self._data_dir / f"node-{index}"
            server = EmbeddedValkey(
                port=port,
                data_dir=data,
                config={**_CONFIG, "cluster-port": str(bus), **self._config},
            )
            try:
                server.start()
            except CLIError as exc:
                server.stop()
                if attempt == PORT_RETRIES or "in use" not in str(exc):
                    raise
                continue
            self._servers.append(server)
            self._bus_ports.append(bus)
            return

    def _form(self) -> None:
        n_masters, deadline = self._n_masters, time.monotonic() + self._timeout_s
        ports = [s.port for s in self._servers]
        for i, port in enumerate(ports[:n_masters]):
            first, last = i * SLOTS // n_masters, (i + 1) * SLOTS // n_masters - 1
            self._cmd(port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            self._cmd(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for port, bus in zip(ports[1:], self._bus_ports[1:], strict=True):
            self._cmd(ports[0], "CLUSTER", "MEET", HOST, port, bus)

        def all_known() -> bool:
            for port in ports:
                lines = str(self._cmd(port, "CLUSTER", "NODES")).splitlines()
                if len(lines) != len(ports) or any("handshake" in ln for ln in lines):
                    return False
            return True

        self._wait(all_known, deadline, "the nodes did not all meet")
        for i, port in enumerate(ports[n_masters:]):
            master_id = str(self._cmd(ports[i], "CLUSTER", "MYID"))
            self._cmd(port, "CLUSTER", "REPLICATE", master_id)
        self._wait(self._stable, deadline, "the cluster did not form")

    def _stable(self) -> bool:
        running = [s.port for s in self._servers if s.running]
        maps = set()
        for port in running:
            info = str(self._cmd(port, "CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
            view = self._parse(str(self._cmd(port, "CLUSTER", "NODES")))
            if len(view) != len(self._servers) or any(n.failed for n in view if n.port in running):
                return False
            owners = tuple(sorted((a, b, n.port) for n in view for a, b in n.slots))
            if sum(b - a + 1 for a, b, _ in owners) != SLOTS:
                return False
            maps.add(owners)
            me = next(n for n in view if n.port == port)
            if me.role == "replica":
                repl = cast(dict[str, Any], self._cmd(port, "INFO", "replication"))
                if repl.get("master_link_status") != "up":
                    return False
        return len(maps) == 1

    def _wait(self, check: Callable[[], _T | None], deadline: float, what: str) -> _T:
        """Poll `check` every `_POLL_S` until it returns a truthy value (returned) or
        `deadline`; redis errors count as not yet. `CLIError` with `what` on timeout."""
        last = ""
        while True:
            try:
                result = check()
                if result:
                    return result
            except (redis.RedisError, OSError) as exc:
                last = f" (last error: {type(exc).__name__}: {exc})"
            if time.monotonic() >= deadline:
                logs = ", ".join(str(s.log_path) for s in self._servers)
                raise CLIError(f"{what} in time{last}; logs: {logs}")
            time.sleep(_POLL_S)

    def _view(self) -> list[ClusterNode]:
        """CLUSTER NODES from the first running node that answers (masters were started
        first)."""
        for server in self._servers:
            if server.running:
                with contextlib.suppress(redis.RedisError, OSError):
                    return self._parse(str(self._cmd(server.port, "CLUSTER", "NODES")))
        raise CLIError("no node of the embedded cluster answers CLUSTER NODES")

    def _parse(self, text: str) -> list[ClusterNode]:
        """CLUSTER NODES lines -> snapshots (migrating ``[slot->-id]`` entries skipped)."""
        running = {s.port for s in self._servers if s.running}
        nodes = []
        for fields in (line.split() for line in text.splitlines() if line.strip()):
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1] or 0)
            flags = set(fields[2].split(","))
            spans = [item.split("-") for item in fields[8:] if not item.startswith("[")]
            slots = tuple(sorted((int(span[0]), int(span[-1])) for span in spans))
            role = "replica" if "slave" in flags else "master"
            master_id = fields[3] if role == "replica" and fields[3] != "-" else None
            failed = bool(flags & {"fail", "fail?"})
            up = port in running
            nodes.append(ClusterNode(HOST, port, fields[0], role, master_id, slots, failed, up))
        return sorted(nodes, key=lambda n: n.port)

    def _node(self, port: int) -> ClusterNode:
        for node in (n for n in self._view() if n.port == port):
            return node
        raise LookupError(f"{HOST}:{port} is not a node of this cluster")

    def _server(self, port: int) -> EmbeddedValkey:
        for server in (s for s in self._servers if s.port == port):
            return server
        raise LookupError(f"{HOST}:{port} is not a node of this cluster")

    def _cmd(self, node: ClusterNode | int, *args: Any) -> Any:
        """One command on `node` (or port) over a short-lived connection; bytes decoded."""
        port = node if isinstance(node, int) else node.port
        client = redis.Redis(host=HOST, port=port, socket_timeout=5.0, socket_connect_timeout=1.0)
        try:
            reply = client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return reply.decode() if isinstance(reply, bytes) else reply
