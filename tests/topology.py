"""Real local Redis topologies for tests: a Sentinel group and a Cluster, on free loopback ports.

``SentinelTopology``: 1 master, 1 replica and 3 sentinels watching service ``mymaster`` with short
timeouts (failover a few seconds after the master dies). ``ClusterTopology``: 3 masters made with
``redis-cli --cluster create``, no replicas. Both start in ``start()``, return only when the topology is
settled, and ``stop()`` terminates every process they started, whatever state it is in.
"""
import os
import subprocess
import time

import redis

from helpers import wait_until
from wsgi_app.redis_server import RedisProcess, free_port

__all__ = ["ClusterTopology", "SentinelProcess", "SentinelTopology"]

SERVICE = "mymaster"


def _admin(port):
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=1)


class SentinelProcess(RedisProcess):
    """``redis-server <config> --sentinel``: a sentinel needs a config file it can rewrite."""

    def __init__(self, data_dir, *, port, monitor, down_after_ms, failover_timeout_ms):
        super().__init__(data_dir, port=port)
        self.monitor = monitor  # (host, port) of the master to watch at start
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def start(self, timeout=10.0):
        self.write_config()
        return super().start(timeout)

    def write_config(self):
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

    def command_line(self):
        return [self.binary, os.path.join(self.data_dir, "sentinel.conf"), "--sentinel"]


class SentinelTopology:
    """1 master + 1 replica + 3 sentinels (quorum 2) on free loopback ports, under ``base_dir``."""

    def __init__(self, base_dir, *, down_after_ms=1000, failover_timeout_ms=3000):
        self.base_dir = str(base_dir)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master = RedisProcess(os.path.join(self.base_dir, "master"), port=free_port())
        self.replica = None
        self.sentinels = []

    @property
    def service_name(self):
        return SERVICE

    @property
    def sentinel_addresses(self):
        return [("127.0.0.1", s.port) for s in self.sentinels]

    @property
    def url(self):
        """The ``redis+sentinel://`` URL of this topology (see ``pool.urls``)."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout=30.0):
        try:
            self.master.start()
            self.replica = RedisProcess(os.path.join(self.base_dir, "replica"), port=free_port(),
                                        extra_args=["--replicaof", "127.0.0.1", str(self.master.port)])
            self.replica.start()
            for i in range(3):
                sentinel = SentinelProcess(os.path.join(self.base_dir, f"sentinel-{i}"), port=free_port(),
                                           monitor=("127.0.0.1", self.master.port), down_after_ms=self.down_after_ms,
                                           failover_timeout_ms=self.failover_timeout_ms)
                self.sentinels.append(sentinel)
                sentinel.start()
            self.wait_settled(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_settled(self, timeout):
        """Until every sentinel sees the master, the replica (in sync) and the two other sentinels."""
        wait_until(lambda: _admin(self.replica.port).info("replication").get("master_link_status") == "up",
                   timeout, what="replica in sync")
        for sentinel in self.sentinels:
            def ready(port=sentinel.port):
                client = _admin(port)
                try:
                    state = client.sentinel_master(SERVICE)
                    replicas = client.sentinel_slaves(SERVICE)
                finally:
                    client.close()
                return (state["num-other-sentinels"] == 2 and not state["is_sdown"]
                        and any(not r["is_sdown"] for r in replicas))
            wait_until(ready, timeout, interval=0.1, what=f"sentinel {sentinel.port} settled")

    def master_address(self, sentinel_index=0):
        """The master as one sentinel reports it now."""
        client = _admin(self.sentinels[sentinel_index].port)
        try:
            host, port = client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            client.close()
        return host, int(port)

    def process_at(self, port):
        for process in (self.master, self.replica):
            if process is not None and process.port == port:
                return process
        raise LookupError(port)

    def kill_master(self):
        """SIGKILL the current master (as the sentinels report it); returns the killed process."""
        _, port = self.master_address()
        process = self.process_at(port)
        process.process.kill()
        process.process.wait(5)
        return process

    def stop(self):
        for process in [*self.sentinels, self.replica, self.master]:
            if process is not None:
                try:
                    process.stop()
                except Exception:  # keep stopping the others
                    pass


class ClusterTopology:
    """A 3-master Redis Cluster (no replicas) on free loopback ports, under ``base_dir``."""

    def __init__(self, base_dir, *, masters=3, node_timeout_ms=2000):
        self.base_dir = str(base_dir)
        self.nodes = []
        self._admins = {}
        for i in range(masters):
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-port", str(free_port())]  # explicit bus port: port + 10000 may not exist
            self.nodes.append(RedisProcess(os.path.join(self.base_dir, f"node-{i}"), port=free_port(), extra_args=args))

    @property
    def addresses(self):
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self):
        """The ``redis+cluster://`` URL of this topology (see ``pool.urls``)."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def start(self, timeout=30.0):
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"{h}:{p}" for h, p in self.addresses), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
            for node in self.nodes:
                wait_until(lambda port=node.port: self.admin(port).cluster("INFO")["cluster_state"] == "ok",
                           timeout, interval=0.1, what=f"cluster_state ok on {node.port}")
            wait_until(self._views_agree, timeout, interval=0.1, what="all nodes agree on slots")
        except BaseException:
            self.stop()
            raise
        return self

    def _views_agree(self):
        views = [sorted(map(str, self.admin(node.port).cluster("SLOTS"))) for node in self.nodes]
        return all(view == views[0] for view in views)

    def admin(self, port):
        """A plain client to one node (cached; closed by ``stop()``)."""
        client = self._admins.get(port)
        if client is None:
            client = self._admins[port] = _admin(port)
        return client

    def node_id(self, port):
        return self.admin(port).execute_command("CLUSTER", "MYID")

    def slot_owner(self, slot):
        """The port of the master serving ``slot``, as the first node sees it."""
        for start, end, master, *_ in self.admin(self.nodes[0].port).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(slot)

    def migrate_slot(self, slot, target_port, batch=10, pause=0.0):
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
        for node in [target, source] + [self.admin(n.port) for n in self.nodes if n.port not in (source_port, target_port)]:
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self):
        for client in self._admins.values():
            client.close()
        self._admins.clear()
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                pass
