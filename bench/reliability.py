"""Reliability figures: fault scenarios against the live service (real gunicorn, gevent worker, 2 workers).

Run: ``python -m bench.reliability [--quick] [--crosstalk-requests N] [--fuzz-requests N] [--only NAME,...]``

It starts a private ``redis-server`` on a free loopback port (AOF on, so a killed server comes back with its
data) and, per scenario, a fresh ``gunicorn -c gunicorn.conf.py`` with ``WEB_CONCURRENCY=2`` against it, either
directly or through a fault proxy (``pool.testing.FaultProxy``, with its seeded jitter mode) running in this
process. Clients (``pool.testing.Load``) are raw HTTP/1.1 keep-alive connections (no pipelining) in greenlets of
this process; every 200 reply is checked against the hash that was asked for (each hash's values name its key),
so a reply meant for another request is counted as *crossed*. The fuzz scenario sends
``pool.testing.FuzzGenerator``'s requests.

Per scenario the table shows: requests sent, succeeded (200 with the right body), expected errors (the
statuses the scenario allows, e.g. 503 with Retry-After while the pool is exhausted), unexpected errors
(anything else: other statuses, broken connections, client timeouts), crossed replies, and the recovery
time: from the moment the fault was cleared until the end of the last failed request (after that point every
request succeeded). Every scenario is bounded by a request count and by time. Results go to
``bench/results/reliability-<UTC time>.json``; the table is printed in Markdown.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402

from pool.server import RedisProcess, find_redis_server, free_port  # noqa: E402
from pool.testing import (  # noqa: E402
    FaultProxy,
    FuzzGenerator,
    Gunicorn,
    Load,
    WaitTimeout,
    acceptable,
    kill_server,
    raw_exchange,
    request,
    response_statuses,
    service_clients,
    wait_until,
)
from pool.testing.fuzz import write_fixtures  # noqa: E402
from pool.testing.load import ABORTED, CROSSED, OK, REFUSED, Dataset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
SERVICE_CONF = REPO / "gunicorn.conf.py"

PREFIX = "greenpool:"  # the service's default KEY_PREFIX


def holds_within(predicate, timeout):
    """True once ``predicate`` holds, False if it did not within ``timeout`` seconds."""
    try:
        wait_until(predicate, timeout, interval=0.02)
    except WaitTimeout:
        return False
    return True


def status_of(port, path, timeout=2.0):
    """The status of one GET on a fresh connection, or ``None`` when it fails."""
    try:
        return request(port, "GET", path, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return None


# -- results ---------------------------------------------------------------------------------------------------
def summarize(name, load, expected, *, cleared_at=None, notes="", extra=None, expected_broken=False):
    """A table row from a finished load: ``expected`` lists the outcomes the scenario allows besides ``ok``."""
    counts = load.counts
    ok = counts.get(OK, 0)
    crossed = counts.get(CROSSED, 0)
    aborted = counts.get(ABORTED, 0)
    expected_n = sum(n for outcome, n in counts.items() if outcome in expected)
    unexpected = {str(o): n for o, n in counts.items() if o not in (OK, CROSSED, ABORTED) and o not in expected}
    recovery = None
    first_ok_after = None
    if cleared_at is not None and load.record:
        failed_ends = [end for start, end, outcome in load.events if outcome not in (OK, ABORTED)]
        last_failure = max(failed_ends, default=None)
        recovery = max(0.0, last_failure - cleared_at) if last_failure is not None else 0.0
        oks_after = [end for start, end, outcome in load.events if outcome == OK and start >= cleared_at]
        first_ok_after = (min(oks_after) - cleared_at) if oks_after else None
    duration = (load.ended or time.monotonic()) - load.started
    row = {
        "scenario": name,
        "sent": load.sent,
        "succeeded": ok,
        "expected_errors": expected_n,
        "unexpected_errors": sum(unexpected.values()),
        "crossed": crossed,
        "client_cancelled": aborted,
        "recovery_s": None if recovery is None else round(recovery, 3),
        "first_ok_after_clear_s": None if first_ok_after is None else round(first_ok_after, 3),
        "outcomes": {str(o): n for o, n in sorted(counts.items(), key=lambda kv: str(kv[0]))},
        "unexpected": unexpected,
        "max_latency_s": {str(o): round(v, 3) for o, v in load.max_latency.items()},
        "examples": load.samples,
        "duration_s": round(duration, 2),
        "requests_per_s": round(load.sent / duration, 1) if duration > 0 else None,
        "notes": notes,
    }
    if extra:
        row.update(extra)
    row["pass"] = crossed == 0 and row["unexpected_errors"] == 0
    return row


def print_row_progress(row):
    print(f"  -> {row['scenario']}: sent {row['sent']}, ok {row['succeeded']}, expected {row['expected_errors']}, "
          f"unexpected {row['unexpected_errors']} {row.get('unexpected') or ''}, crossed {row['crossed']}, "
          f"recovery {row['recovery_s']}s, {row['duration_s']}s, {'PASS' if row['pass'] else 'FAIL'}", flush=True)


def markdown_table(rows):
    lines = ["| scenario | requests sent | succeeded | expected errors | unexpected errors | crossed replies "
             "| recovery time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        recovery = "-" if row.get("recovery_s") is None else f"{row['recovery_s']:.2f} s"
        expected = f"{row['expected_errors']:,}"
        if row.get("expected_label"):
            expected += f" ({row['expected_label']})"
        lines.append(f"| {row['scenario']} | {row['sent']:,} | {row['succeeded']:,} | {expected} | "
                     f"{row['unexpected_errors']:,} | {row['crossed']:,} | {recovery} |")
    return "\n".join(lines)


def label(counts, expected):
    parts = [f"{counts[o]:,}x {o}" for o in expected if counts.get(o)]
    return ", ".join(parts)


# -- the bench ---------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.workdir = Path(tempfile.mkdtemp(prefix="greenpool-reliability-"))
        self.redis = RedisProcess(self.workdir / "redis", port=free_port(), extra_args=["--appendonly", "yes"])
        self.admin = None
        self.rows = []
        self.services = []
        self.proxies = []

    # helpers
    def start(self):
        self.redis.start()
        self.admin = redis.Redis(port=self.redis.port, socket_timeout=5)

    def close(self):
        for service in self.services:
            self.stop_service(service, 10)
        for proxy in self.proxies:
            proxy.stop()
        self.redis.stop()

    def service(self, env=None, via_proxy=False, proxy_seed=0, url_query=""):
        proxy = None
        url = self.redis.url
        if via_proxy:
            proxy = FaultProxy("127.0.0.1", self.redis.port, max_connections=2048, seed=proxy_seed).start()
            self.proxies.append(proxy)
            url = proxy.url
        svc = Gunicorn(SERVICE_CONF, self.workdir, {"REDIS_URL": url + url_query, **(env or {})}, workers=2)
        self.services.append(svc)
        svc.start(30)
        return svc, proxy

    def finish(self, svc, proxy=None):
        self.stop_service(svc, 30)
        if proxy is not None:
            proxy.stop()

    @staticmethod
    def stop_service(svc, timeout):
        try:
            svc.stop(timeout)
        except TimeoutError as exc:  # killed: say so, and go on with the other scenarios
            print(f"  warning: {str(exc).splitlines()[0]} (killed)", flush=True)

    def service_clients(self):
        return service_clients(self.admin)

    def add(self, row):
        self.rows.append(row)
        print_row_progress(row)

    def scale(self, full, quick):
        return quick if self.quick else full

    # scenarios -----------------------------------------------------------------------------------------------
    def steady(self, data):
        svc, _ = self.service({"REQUEST_TIMEOUT": 2})
        load = Load(svc.port, data, clients=32, max_requests=self.scale(30000, 8000), max_seconds=30).start()
        peak = {}
        while load.running():  # what the server sees: connections per worker (POOL_MULTIPLEX, default 2)
            names = [c["name"] for c in self.service_clients()]
            for name in set(names):
                peak[name] = max(peak.get(name, 0), names.count(name))
            gevent.sleep(0.05)
        load.join()
        self.finish(svc)
        self.add(summarize("steady state", load, (), extra={"peak_connections_per_worker": peak},
                           notes=f"peak connections per worker on the server: {sorted(peak.values())}"))

    def pool_exhausted(self, data):
        # one shared connection per worker (POOL_MAX_SIZE 2: POOL_MULTIPLEX 1) owing at most 4 replies, each
        # command held 0.3 s by the proxy, 48 clients: most must get a 503 after POOL_TIMEOUT (0.25 s) waiting for
        # room, never wait longer (with POOL_MULTIPLEX=0 the same env exhausts the 2 exclusive connections)
        env = {"POOL_MAX_SIZE": 2, "POOL_TIMEOUT": 0.25, "REQUEST_TIMEOUT": 3, "RETRY_AFTER": 1}
        svc, proxy = self.service(env, via_proxy=True, url_query="?multiplex_max_in_flight=4")
        load = Load(svc.port, data, clients=48, max_requests=50000, max_seconds=12, error_pause=0.005).start()
        gevent.sleep(0.5)
        proxy.delay(0.15)
        gevent.sleep(3.0)
        proxy.passthrough()
        cleared = time.monotonic()
        gevent.sleep(2.0)
        load.stop()
        self.finish(svc, proxy)
        slow_503 = load.max_latency.get(503, 0.0)
        self.add(summarize("pool exhausted (1 shared conn/worker owing 4 replies at most, +0.3 s per command, "
                           "48 clients, 3 s)", load, (503,),
                           cleared_at=cleared, extra={"expected_label": label(load.counts, (503,)),
                                                      "max_503_latency_s": round(slow_503, 3)},
                           notes=f"every 503 carried Retry-After; slowest 503 took {slow_503 * 1000:.0f} ms "
                                 f"(POOL_TIMEOUT 250 ms)"))

    def frozen(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        self.redis.pause()
        gevent.sleep(2.0)
        self.redis.resume()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc)
        worst = max((v for o, v in load.max_latency.items()), default=0.0)
        row = summarize("Redis frozen (SIGSTOP 2 s)", load, (503, 504), cleared_at=cleared,
                        extra={"expected_label": label(load.counts, (503, 504)), "max_latency": round(worst, 3)},
                        notes=f"slowest answer {worst:.2f} s (REQUEST_TIMEOUT 1 s + 0.5 s allowed)")
        row["pass"] = row["pass"] and worst <= 1.5
        self.add(row)

    def restarted(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        t_down = time.monotonic()
        self.redis.restart()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc)
        self.add(summarize("Redis restarted (SIGTERM, same port)", load, (503,), cleared_at=cleared,
                           extra={"expected_label": label(load.counts, (503,)),
                                  "down_for_s": round(cleared - t_down, 3)},
                           notes=f"server down {cleared - t_down:.2f} s"))

    def client_kill(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        killed = 0
        for _ in range(3):
            for client in self.service_clients():
                killed += self.admin.execute_command("CLIENT", "KILL", "ID", client["id"]) or 0
            gevent.sleep(0.5)
        cleared = time.monotonic() - 0.5
        gevent.sleep(2.0)
        load.stop()
        self.finish(svc)
        self.add(summarize("CLIENT KILL of the service's connections (3x, 0.5 s apart)", load, (503,),
                           cleared_at=cleared, extra={"expected_label": label(load.counts, (503,)),
                                                      "connections_killed": killed},
                           notes=f"{killed} connections killed"))

    def blackhole(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, proxy = self.service(env, via_proxy=True)
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        proxy.blackhole()
        gevent.sleep(2.0)
        proxy.passthrough()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc, proxy)
        worst = max(load.max_latency.values(), default=0.0)
        row = summarize("blackhole (proxy forwards nothing, 2 s)", load, (503, 504), cleared_at=cleared,
                        extra={"expected_label": label(load.counts, (503, 504)), "max_latency": round(worst, 3)},
                        notes=f"slowest answer {worst:.2f} s (REQUEST_TIMEOUT 1 s + 0.5 s allowed)")
        row["pass"] = row["pass"] and worst <= 1.5
        self.add(row)

    def refusing(self, data):
        env = {"REQUEST_TIMEOUT": 1.0, "POOL_TIMEOUT": 0.5}
        svc, _ = self.service(env)
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=15).start()
        gevent.sleep(1.0)
        kill_server(self.redis)
        gevent.sleep(2.0)
        self.redis.start()
        cleared = time.monotonic()
        gevent.sleep(2.5)
        load.stop()
        self.finish(svc)
        slow_503 = load.max_latency.get(503, 0.0)
        self.add(summarize("Redis refusing (SIGKILL, down 2 s, restarted)", load, (503,), cleared_at=cleared,
                           extra={"expected_label": label(load.counts, (503,)),
                                  "max_503_latency_s": round(slow_503, 3)},
                           notes=f"slowest 503 {slow_503 * 1000:.0f} ms"))

    def sigterm(self, data):
        svc, _ = self.service({"REQUEST_TIMEOUT": 2, "POOL_MAX_SIZE": 4})
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=30, stop_on_refused=True).start()
        gevent.sleep(1.0)
        t_signal = time.monotonic()
        svc.send(signal.SIGTERM)
        code = svc.wait_exit(30)
        exit_s = time.monotonic() - t_signal
        load.stop()
        holds_within(lambda: not self.service_clients(), 5)  # the pools close as the workers exit
        left = len(self.service_clients())
        refused = load.counts.get(REFUSED, 0)
        row = summarize("SIGTERM under load", load, (REFUSED,),
                        extra={"expected_label": f"{refused:,}x refused new connection after the listener closed"
                               if refused else "", "exit_code": code, "exit_s": round(exit_s, 2),
                               "service_connections_left": left},
                        notes=f"master exited {code} {exit_s:.2f} s after SIGTERM; {left} service connections left "
                              f"on Redis; a new connection after the listener closed is refused, not failed")
        row["pass"] = row["pass"] and code == 0 and left == 0
        self.add(row)

    def hup(self, data):
        svc, _ = self.service({"REQUEST_TIMEOUT": 2, "POOL_MAX_SIZE": 4, "GRACEFUL_TIMEOUT": 10})
        old = svc.worker_pids()
        load = Load(svc.port, data, clients=16, max_requests=60000, max_seconds=30).start()
        gevent.sleep(1.0)
        t_signal = time.monotonic()
        svc.send(signal.SIGHUP)
        replaced = holds_within(lambda: len(svc.worker_pids()) == 2 and not (svc.worker_pids() & old), 20)
        swap_s = time.monotonic() - t_signal
        gevent.sleep(1.0)
        load.stop()
        new = svc.worker_pids()
        self.finish(svc)
        row = summarize("HUP under load", load, (),
                        extra={"workers_replaced": replaced, "swap_s": round(swap_s, 2)},
                        notes=f"workers {sorted(old)} -> {sorted(new)} in {swap_s:.2f} s")
        row["pass"] = row["pass"] and replaced
        self.add(row)

    def timeout_storm(self, data):
        env = {"REQUEST_TIMEOUT": 0.1, "POOL_MAX_SIZE": 32, "POOL_TIMEOUT": 1}
        svc, proxy = self.service(env, via_proxy=True, proxy_seed=7)
        proxy.jitter(0.035, 0.12, 0.3)
        load = Load(svc.port, data, clients=48, max_requests=self.scale(30000, 8000), max_seconds=60,
                    error_pause=0).start()
        load.join()
        self.finish(svc, proxy)
        share = load.counts.get(504, 0) / max(1, load.sent)
        self.add(summarize("request timeout storm (REQUEST_TIMEOUT 0.1 s, 3.5% of chunks held 0.12-0.3 s)", load,
                           (504,), extra={"expected_label": f"{share:.1%} 504", "timeout_share": round(share, 4)}))

    def crosstalk(self, data, total):
        a = self.args
        env = {"REQUEST_TIMEOUT": a.crosstalk_timeout, "POOL_MAX_SIZE": 64, "POOL_TIMEOUT": 1}
        svc, proxy = self.service(env, via_proxy=True, proxy_seed=11)
        low = a.crosstalk_timeout * 1.2
        proxy.jitter(a.crosstalk_jitter, low, low + 0.15)
        load = Load(svc.port, data, clients=self.args.crosstalk_concurrency, max_requests=total,
                    max_seconds=self.args.crosstalk_max_seconds, record=False, abort_probability=a.crosstalk_abort,
                    error_pause=0, seed=3).start()
        last, next_report = 0, time.monotonic() + 10
        while load.running():
            gevent.sleep(0.2)
            if time.monotonic() >= next_report and (load.sent - last >= 100000 or self.quick):
                last, next_report = load.sent, time.monotonic() + 10
                rate = load.sent / (time.monotonic() - load.started)
                print(f"     cross-talk: {load.sent:,} sent, {load.counts.get(CROSSED, 0)} crossed, "
                      f"{load.counts.get(504, 0):,} 504, {load.counts.get(ABORTED, 0):,} client-cancelled, "
                      f"{rate:,.0f} req/s, load {os.getloadavg()[0]:.2f}", flush=True)
        load.join()
        jittered = proxy.jittered
        self.finish(svc, proxy)
        cancelled = load.counts.get(504, 0) + load.counts.get(ABORTED, 0)
        share = cancelled / max(1, load.sent)
        row = summarize(f"cross-talk ({total:,} requests, ~10% cancelled)", load, (504,),
                        extra={"expected_label": f"{load.counts.get(504, 0):,}x 504; besides, "
                                                 f"{load.counts.get(ABORTED, 0):,} client-cancelled; "
                                                 f"{share:.1%} cancelled in all",
                               "cancelled_share": round(share, 4), "proxy_chunks_held": jittered,
                               "concurrency": self.args.crosstalk_concurrency},
                        notes=f"REQUEST_TIMEOUT {a.crosstalk_timeout} s; the proxy holds {a.crosstalk_jitter:.1%} of "
                              f"chunks {low:.2f}-{low + 0.15:.2f} s; {a.crosstalk_abort:.0%} of requests closed by the "
                              f"client mid-request; {a.crosstalk_concurrency} connections")
        self.add(row)

    # the fuzz -----------------------------------------------------------------------------------------------
    def fuzz(self, data, total):
        token = "fuzz-t0ken"
        env = {"REQUEST_TIMEOUT": 2, "API_TOKEN": token}
        svc, _ = self.service(env)
        write_fixtures(self.admin, PREFIX)
        before = self.snapshot()
        pids = svc.worker_pids()
        gen = FuzzGenerator(self.args.seed, token, data.names)
        statuses = Counter()  # every reply's status (1xx interim replies included)
        outcomes = Counter()  # per request: "2xx", "4xx", "501 (unknown transfer coding)", "5xx", "no reply"
        kinds_5xx = Counter()
        kinds = Counter()
        no_reply = Counter()
        examples = {}
        state = {"sent": 0}
        started = time.monotonic()

        def worker():
            while state["sent"] < total:
                state["sent"] += 1
                kind, raw, method = gen.next()
                kinds[kind] += 1
                got = fuzz_statuses(svc.port, raw, method)
                for status in got:
                    statuses[status] += 1
                final = [status for status in got if status >= 200]
                if not final:
                    no_reply[kind] += 1
                    outcomes["no reply"] += 1
                    continue
                worst = max(final)
                if worst >= 500 and acceptable(worst, raw):  # gunicorn's 501 to an unknown transfer coding
                    outcomes["501 (unknown transfer coding)"] += 1
                elif worst >= 500:
                    outcomes["5xx"] += 1
                    kinds_5xx[kind] += 1
                    examples.setdefault(kind, (raw[:300].decode("latin-1"), worst))
                else:
                    outcomes[f"{worst // 100}xx"] += 1

        gevent.joinall([gevent.spawn(worker) for _ in range(16)], raise_error=True)
        duration = time.monotonic() - started
        after = self.snapshot()
        changed = sorted(k.decode("latin-1") for k in set(before) | set(after) if before.get(k) != after.get(k))
        healthy = all(status_of(svc.port, "/hashes/" + name) == 200 for name in data.names[:20])
        same_workers = svc.worker_pids() == pids
        log = svc.log()
        self.finish(svc)
        n5xx = outcomes["5xx"]
        n501 = outcomes["501 (unknown transfer coding)"]
        exceptions = Counter(line.strip() for line in log.splitlines()
                             if EXCEPTION_LINE.match(line) and not line.startswith("Traceback"))
        row = {
            "scenario": f"HTTP fuzz ({total:,} malformed/hostile requests, seed {self.args.seed})",
            "sent": total, "succeeded": outcomes["2xx"] + outcomes["3xx"],
            "expected_errors": outcomes["4xx"] + outcomes["no reply"] + n501,
            "unexpected_errors": n5xx, "crossed": 0, "recovery_s": None,
            "expected_label": f"{outcomes['4xx']:,} 4xx, {outcomes['no reply']:,} closed without reply, "
                              f"{n501:,} gunicorn 501 for an unknown Transfer-Encoding",
            "outcomes": dict(outcomes), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_exceptions": dict(exceptions.most_common(20)),
            "no_reply_by_kind": dict(no_reply), "kinds": dict(kinds), "five_xx_by_kind": dict(kinds_5xx),
            "five_xx_examples": {k: v for k, v in examples.items()},
            "redis_keys_changed": changed, "healthy_after": healthy, "same_workers_after": same_workers,
            "unhandled_errors_logged": log.count("unhandled error"), "duration_s": round(duration, 2),
            "notes": "",
        }
        row["notes"] = (f"replies by status {row['statuses']}; Redis keys changed: {len(changed)}; healthy after: "
                        f"{healthy}; same workers: {same_workers}; 5xx by kind {dict(kinds_5xx)}; server exceptions "
                        f"{dict(exceptions.most_common(8))}")
        row["pass"] = n5xx == 0 and not changed and healthy and same_workers
        self.add(row)

    def snapshot(self):
        return {key: self.admin.dump(key) for key in self.admin.scan_iter(count=1000)}


# -- fuzz ----------------------------------------------------------------------------------------------------
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Data|Size|Terminator|Length|Line)\b.*:")


def fuzz_statuses(port, raw, method, timeout=5.0):
    """The statuses of the replies to ``raw`` (sent on a fresh connection, half-closed); none when the
    connection could not be made or the server neither answered nor closed within ``timeout``."""
    try:
        return response_statuses(raw_exchange(port, raw, timeout), method)
    except OSError:
        return []


def machine():
    info = {
        "nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": "", "loadavg_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import gunicorn
    info.update(gevent=gevent.__version__, redis_py=redis.__version__, gunicorn=gunicorn.__version__)
    try:
        info["redis_server"] = subprocess.run([find_redis_server(), "--version"], capture_output=True,
                                              text=True, timeout=10, check=False).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        info["redis_server"] = repr(exc)
    return info


SCENARIOS = ["steady", "pool_exhausted", "frozen", "restarted", "client_kill", "blackhole", "refusing", "sigterm",
             "hup", "timeout_storm", "crosstalk", "fuzz"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (cross-talk 50,000, fuzz 10,000)")
    parser.add_argument("--crosstalk-requests", type=int, default=None,
                        help="requests in the cross-talk run (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--crosstalk-concurrency", type=int, default=64, help="client connections (default 64)")
    parser.add_argument("--crosstalk-timeout", type=float, default=0.25, help="REQUEST_TIMEOUT of the cross-talk run")
    parser.add_argument("--crosstalk-jitter", type=float, default=0.025,
                        help="share of proxied chunks held past REQUEST_TIMEOUT (default 0.025)")
    parser.add_argument("--crosstalk-abort", type=float, default=0.05,
                        help="share of requests the client closes mid-request (default 0.05)")
    parser.add_argument("--crosstalk-max-seconds", type=float, default=3600.0, help="time bound of the cross-talk run")
    parser.add_argument("--fuzz-requests", type=int, default=None, help="fuzz requests (default 10,000)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the fuzz generator")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--json", default=None, help="results path (default bench/results/reliability-<time>.json)")
    args = parser.parse_args(argv)
    if args.crosstalk_requests is None:
        args.crosstalk_requests = 50_000 if args.quick else 1_000_000
    if args.fuzz_requests is None:
        args.fuzz_requests = 10_000
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or SCENARIOS
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    info = machine()
    print(f"greenpool reliability: {info['nproc']} cores ({info['cpu']}), python {info['python']}, gunicorn "
          f"{info['gunicorn']}, gevent {info['gevent']}, redis-py {info['redis_py']}, {info['redis_server']}")
    print(f"load average at start: {'/'.join(f'{x:.2f}' for x in info['loadavg_start'])}", flush=True)
    bench = Bench(args)
    started = time.monotonic()
    keep_workdir = False
    try:
        bench.start()
        data = Dataset.generate("h", 10_000)
        data.write(bench.admin)
        for name in chosen:
            print(f"* {name}", flush=True)
            t0 = time.monotonic()
            if name == "crosstalk":
                bench.crosstalk(data, args.crosstalk_requests)
            elif name == "fuzz":
                bench.fuzz(data, args.fuzz_requests)
            else:
                getattr(bench, name)(data)
            bench.rows[-1]["wall_s"] = round(time.monotonic() - t0, 1)
            bench.rows[-1]["loadavg_after"] = os.getloadavg()
    except BaseException:
        keep_workdir = True
        raise
    finally:
        bench.close()
        total = time.monotonic() - started
        info["loadavg_end"] = os.getloadavg()
        info["total_s"] = round(total, 1)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        suffix = "-quick" if args.quick else ""
        path = Path(args.json) if args.json else RESULTS_DIR / f"reliability-{stamp}{suffix}.json"
        result = {"command": " ".join(["python -m bench.reliability", *(argv if argv is not None else sys.argv[1:])]),
                  "machine": info, "rows": bench.rows, "all_passed": all(r["pass"] for r in bench.rows)}
        path.write_text(json.dumps(result, indent=2, default=str))
        if keep_workdir:
            print(f"logs kept in {bench.workdir}")
        else:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        print()
        print(markdown_table(bench.rows))
        print()
        for row in bench.rows:
            if row.get("notes"):
                print(f"- {row['scenario']}: {row['notes']}")
        print(f"\ntotal {total:.0f} s; load average at end {'/'.join(f'{x:.2f}' for x in info['loadavg_end'])}; "
              f"results in {path}")
        print("ALL PASSED" if result["all_passed"] else
              "FAILED: " + ", ".join(r["scenario"] for r in bench.rows if not r["pass"]))
    return 0 if all(r["pass"] for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
