"""Real local Redis topologies: a Sentinel group and a Cluster, on free loopback ports (for tests and local runs).

``SentinelTopology``: 1 master, 1 replica and 3 sentinels watching service ``mymaster`` with short
timeouts (failover a few seconds after the master dies). ``ClusterTopology``: 3 masters made with
``redis-cli --cluster create``, no replicas. Both start in ``start()``, return only when the topology is
settled, and ``stop()`` terminates every process they started, whatever state it is in.
"""
from __future__ import annotations

import os
import subprocess
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import redis

from ..server import RedisProcess, free_port
from .wait import wait_until

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ClusterTopology", "SentinelProcess", "SentinelTopology"]

SERVICE = "mymaster"


def _admin(port: int) -> Any:
    """A plain client to one loopback port (typed Any: redis-py's replies are unions with its async variants)."""
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=1)


def _port(process: RedisProcess) -> int:
    """The TCP port of a process of a topology (they all listen on loopback ports, none on a unix socket)."""
    if process.port is None:
        raise ValueError(f"{process!r} listens on no TCP port")
    return process.port


class SentinelProcess(RedisProcess):
    """``redis-server <config> --sentinel``: a sentinel needs a config file it can rewrite."""

    def __init__(self, data_dir: str, *, port: int, monitor: tuple[str, int], down_after_ms: int,
                 failover_timeout_ms: int) -> None:
        super().__init__(data_dir, port=port)
        self.monitor = monitor  # (host, port) of the master to watch at start
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def start(self, timeout: float = 10.0) -> Self:
        self.write_config()
        return super().start(timeout)

    def write_config(self) -> str:
        os.makedirs(self.data_dir, exist_ok=True)
        host, port = self.monitor
        down_after_ms, failover_timeout_ms = self.down_after_ms, self.failover_timeout_ms
        path = os.path.join(self.data_dir, "sentinel.conf")
        with open(path, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
                f"sentinel monitor {SERVICE} {host} {port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
        return path

    def command_line(self) -> list[str]:
        return [self.binary, os.path.join(self.data_dir, "sentinel.conf"), "--sentinel"]


class SentinelTopology:
    """1 master + 1 replica + 3 sentinels (quorum 2) on free loopback ports, under ``base_dir``."""

    def __init__(self, base_dir: str | os.PathLike[str], *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.base_dir = str(base_dir)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master = RedisProcess(os.path.join(self.base_dir, "master"), port=free_port())
        self.replica: RedisProcess | None = None
        self.sentinels: list[SentinelProcess] = []

    @property
    def service_name(self) -> str:
        return SERVICE

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", _port(s)) for s in self.sentinels]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of this topology (see ``pool.urls``)."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 30.0) -> SentinelTopology:
        try:
            self.master.start()
            self.replica = RedisProcess(os.path.join(self.base_dir, "replica"), port=free_port(),
                                        extra_args=["--replicaof", "127.0.0.1", str(_port(self.master))])
            self.replica.start()
            for i in range(3):
                sentinel = SentinelProcess(os.path.join(self.base_dir, f"sentinel-{i}"), port=free_port(),
                                           monitor=("127.0.0.1", _port(self.master)), down_after_ms=self.down_after_ms,
                                           failover_timeout_ms=self.failover_timeout_ms)
                self.sentinels.append(sentinel)
                sentinel.start()
            self.wait_settled(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_settled(self, timeout: float) -> None:
        """Until every sentinel sees the master, the replica (in sync) and the two other sentinels."""
        if self.replica is None:
            raise RuntimeError("start() makes the replica")
        replica_port = _port(self.replica)
        wait_until(lambda: _admin(replica_port).info("replication").get("master_link_status") == "up",
                   timeout, what="replica in sync")
        for _, sentinel_port in self.sentinel_addresses:
            def ready(port: int = sentinel_port) -> bool:
                client = _admin(port)
                try:
                    state = client.sentinel_master(SERVICE)
                    replicas = client.sentinel_slaves(SERVICE)
                finally:
                    client.close()
                return bool(state["num-other-sentinels"] == 2 and not state["is_sdown"]
                            and any(not r["is_sdown"] for r in replicas))
            wait_until(ready, timeout, interval=0.1, what=f"sentinel {sentinel_port} settled")

    def master_address(self, sentinel_index: int = 0) -> tuple[str, int]:
        """The master as one sentinel reports it now."""
        client = _admin(self.sentinel_addresses[sentinel_index][1])
        try:
            host, port = client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            client.close()
        return host, int(port)

    def process_at(self, port: int) -> RedisProcess:
        for process in (self.master, self.replica):
            if process is not None and process.port == port:
                return process
        raise LookupError(port)

    def kill_master(self) -> RedisProcess:
        """SIGKILL the current master (as the sentinels report it); returns the killed process."""
        _, port = self.master_address()
        process = self.process_at(port)
        if process.process is not None:
            process.process.kill()
            process.process.wait(5)
        return process

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            if process is not None:
                try:
                    process.stop()
                except (OSError, subprocess.SubprocessError):  # keep stopping the others
                    pass


class ClusterTopology:
    """A 3-master Redis Cluster (no replicas) on free loopback ports, under ``base_dir``."""

    def __init__(self, base_dir: str | os.PathLike[str], *, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.base_dir = str(base_dir)
        self.nodes: list[RedisProcess] = []
        self._admins: dict[int, Any] = {}
        for i in range(masters):
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-port", str(free_port())]  # explicit bus port: port + 10000 may not exist
            self.nodes.append(RedisProcess(os.path.join(self.base_dir, f"node-{i}"), port=free_port(), extra_args=args))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", _port(node)) for node in self.nodes]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of this topology (see ``pool.urls``)."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def start(self, timeout: float = 30.0) -> ClusterTopology:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"{h}:{p}" for h, p in self.addresses), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
            for _, port in self.addresses:
                wait_until(partial(self._state_ok, port), timeout, interval=0.1, what=f"cluster_state ok on {port}")
            wait_until(self._views_agree, timeout, interval=0.1, what="all nodes agree on slots")
        except BaseException:
            self.stop()
            raise
        return self

    def _state_ok(self, port: int) -> bool:
        return bool(self.admin(port).cluster("INFO")["cluster_state"] == "ok")

    def _views_agree(self) -> bool:
        views = [sorted(map(str, self.admin(port).cluster("SLOTS"))) for _, port in self.addresses]
        return all(view == views[0] for view in views)

    def admin(self, port: int) -> Any:
        """A plain client to one node (cached; closed by ``stop()``)."""
        client = self._admins.get(port)
        if client is None:
            client = self._admins[port] = _admin(port)
        return client

    def node_id(self, port: int) -> Any:
        return self.admin(port).execute_command("CLUSTER", "MYID")

    def slot_owner(self, slot: int) -> int:
        """The port of the master serving ``slot``, as the first node sees it."""
        for start, end, master, *_ in self.admin(self.addresses[0][1]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(slot)

    def migrate_slot(self, slot: int, target_port: int, batch: int = 10, pause: float = 0.0) -> int:
        """Move ``slot`` to ``target_port`` the way ``redis-cli --cluster reshard`` does, key batch by batch.

        IMPORTING on the target, MIGRATING on the source, MIGRATE keys over, then SETSLOT NODE on all.
        Returns the number of keys moved.
        """
        source_port = self.slot_owner(slot)
        source, target = self.admin(source_port), self.admin(target_port)
        source_id, target_id = self.node_id(source_port), self.node_id(target_port)
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        for _ in range(100_000):  # bounded: the slot's keys run out long before
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            if pause:
                time.sleep(pause)
        others = [self.admin(port) for _, port in self.addresses if port not in (source_port, target_port)]
        for node in [target, source, *others]:
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self) -> None:
        for client in self._admins.values():
            client.close()
        self._admins.clear()
        for node in self.nodes:
            try:
                node.stop()
            except (OSError, subprocess.SubprocessError):  # keep stopping the others
                pass
