"""The service's throughput by POOL_MULTIPLEX: one gevent worker per setting, ``GET /`` driven by wrk, in one run.

Run: ``python -m bench.multiplex_sweep [--values 0,1,2,4] [--conns 200] [--reps 3] [--duration 5]``

It starts a private ``redis-server`` on a free loopback port (never 6379) holding the 10-field hash at ``key``
(``GET /`` reads it), and one ``gunicorn -c gunicorn.conf.py`` (1 gevent worker, ``POOL_MAX_SIZE=10``) per
``POOL_MULTIPLEX`` value, each on its own free port; then runs ``wrk -t2 -c<conns> -d<duration>s`` against each
in turn, ``--reps`` times, interleaved. Per value it prints the median requests/s (min-max), the worker's and
redis-server's CPU per request (utime+stime from /proc), and, at the end, the connections each worker's pool
held on the server (CLIENT LIST). It needs ``wrk`` on PATH. Bounded: reps x values x duration, wrk's timeout 10 s.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import redis  # noqa: E402

from pool.server import RedisProcess, free_port  # noqa: E402
from pool.testing import Gunicorn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of ``pid`` from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wrk(url, conns, duration):
    """``(requests, requests/s)`` of one wrk run; non-2xx replies are counted as failures and subtracted."""
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", url],
                         capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    ok = requests - (int(bad.group(1)) if bad else 0)
    return ok, ok / duration


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.multiplex_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--values", default="0,1,2,4", help="POOL_MULTIPLEX values, comma-separated")
    p.add_argument("--conns", type=int, default=200, help="wrk connections")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install -y wrk)")
    values = [int(v) for v in args.values.split(",")]
    workdir = tempfile.mkdtemp(prefix="greenpool-sweep-")
    server = RedisProcess(os.path.join(workdir, "redis"), port=free_port()).start()
    services = {}
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        admin.hset("key", mapping={f"field{i}": "x" * 20 for i in range(10)})
        for value in values:
            env = {"REDIS_URL": server.url, "POOL_MULTIPLEX": value, "POOL_MAX_SIZE": 10}
            services[value] = Gunicorn(os.path.join(ROOT, "gunicorn.conf.py"), workdir, env, cwd=ROOT).start(30)
            wrk(services[value].url + "/", 50, 1)  # warm-up
        runs = {value: [] for value in values}
        for _ in range(args.reps):
            for value in values:
                (worker,) = services[value].worker_pids()
                before = cpu_seconds(worker), cpu_seconds(server.pid)
                ok, rate = wrk(services[value].url + "/", args.conns, args.duration)
                after = cpu_seconds(worker), cpu_seconds(server.pid)
                runs[value].append((rate, (after[0] - before[0]) / ok * 1e6, (after[1] - before[1]) / ok * 1e6))
        print(f"GET / on 1 gevent worker, wrk -t2 -c{args.conns}, {args.reps} reps x {args.duration} s, interleaved")
        print(f"{'POOL_MULTIPLEX':>14} {'req/s':>8} {'min-max':>13} {'worker us/req':>14} {'redis us/req':>13}")
        for value, rows in runs.items():
            rates = [row[0] for row in rows]
            worker_us = statistics.median(row[1] for row in rows)
            redis_us = statistics.median(row[2] for row in rows)
            print(f"{value:>14} {statistics.median(rates):>8.0f} {min(rates):>6.0f}-{max(rates):<6.0f} "
                  f"{worker_us:>14.0f} {redis_us:>13.1f}")
        held = {}
        for client in admin.client_list():
            if client["name"].startswith("greenpool:web-"):
                held[client["name"]] = held.get(client["name"], 0) + 1
        print("connections each worker's pool held on the server:", sorted(held.values()))
        print(f"load average at end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for service in services.values():
            service.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
