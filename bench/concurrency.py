"""The concurrent case of ``bench.pool_bench`` (issue 12): 200 greenlets doing HGETALL of a 10-field hash.

Cases, measured in the same run with interleaved repetitions (the order rotates each rep):

* redis-py ``ConnectionPool`` (``redis.Redis(host, port, max_connections=200)``: a connection per greenlet,
  redis-py's default Retry; its default ``max_connections`` of 100 would refuse half of the greenlets);
* ``RedisPool(max_size=10)`` exclusive: ``PooledRedis`` and the raw ``with p.connection()`` send+read;
* ``RedisPool(max_size=10, multiplex=N)``: ``PooledRedis``, the raw shared path ``p.execute()`` and plain
  ``redis.Redis`` (its per-call ``SharedHandle``: redis-py's full client layers, for comparison);

then one greenlet alone, multiplexed against exclusive. Per case: commands/s, this process's CPU per command
(``time.process_time``) and redis-server's CPU per command (``/proc/<pid>/task/*/schedstat``, nanoseconds;
``/proc/<pid>/stat`` ticks where schedstat is missing). Medians over reps with min-max spreads.
"""
import cProfile
import glob
import os
import pstats
import statistics
import time
from itertools import repeat

import gevent
import redis

from pool import PooledRedis, RedisPool
from pool import stats as S

GREENLETS = 200
TARGET_THROUGHPUT_X = 5.0
TARGET_POOLED_CPU_US = 12.0
TARGET_RAW_CPU_US = 8.0
TARGET_SERVER_CPU_US = 2.0
TARGET_LONE_PCT = 10.0


def server_cpu_seconds(pid):
    """CPU time redis-server has used so far: schedstat (ns) summed over its threads, else stat ticks."""
    tasks = glob.glob(f"/proc/{pid}/task/*/schedstat")
    if tasks:
        total = 0
        for path in tasks:
            try:
                with open(path) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError):
                pass
        if total:
            return total / 1e9
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spread(samples):
    ordered = sorted(samples)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "samples": samples}


def run_concurrent(op, commands, max_seconds, server_pid, greenlets=GREENLETS):
    """``greenlets`` greenlets share ``commands`` calls of ``op()``; returns (cmd/s, client us/cmd, server us/cmd)."""
    per = commands // greenlets
    deadline = time.perf_counter() + max_seconds
    done = [0]

    def worker():
        count = 0
        for _ in repeat(None, per):
            op()
            count += 1
            if not count % 50 and time.perf_counter() > deadline:
                break
        done[0] += count

    server_before = server_cpu_seconds(server_pid)
    start, start_cpu = time.perf_counter(), time.process_time()
    gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)], raise_error=True)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    server = server_cpu_seconds(server_pid) - server_before
    n = done[0]
    return n / elapsed, cpu / n * 1e6, server / n * 1e6


def run_lone(op, commands, max_seconds):
    """One greenlet, ``commands`` calls of ``op()`` (or until ``max_seconds``): (wall us/cmd, cpu us/cmd)."""
    deadline = time.perf_counter() + max_seconds
    start, start_cpu = time.perf_counter(), time.process_time()
    n = 0
    while n < commands:
        for _ in repeat(None, 200):
            op()
        n += 200
        if time.perf_counter() > deadline:
            break
    return (time.perf_counter() - start) / n * 1e6, (time.process_time() - start_cpu) / n * 1e6


def make_cases(port, key, multiplex, closers):
    stock = redis.Redis(host="127.0.0.1", port=port, max_connections=GREENLETS)  # its default 100 would refuse
    closers.append(stock.connection_pool.disconnect)
    exclusive = RedisPool(host="127.0.0.1", port=port, max_size=10, name="bench-exclusive")
    closers.append(exclusive.close)
    shared = RedisPool(host="127.0.0.1", port=port, max_size=10, multiplex=multiplex, name="bench-shared")
    closers.append(shared.close)
    exclusive_lean = PooledRedis(connection_pool=exclusive)
    shared_lean = PooledRedis(connection_pool=shared)
    shared_plain = redis.Redis(connection_pool=shared)

    def exclusive_raw(connection=exclusive.connection):
        with connection() as conn:
            conn.send_command("HGETALL", key)
            return conn.read_response()

    def shared_raw(execute=shared.execute):
        return execute("HGETALL", key)

    concurrent = [
        ("redis-py ConnectionPool: Redis.hgetall", lambda: stock.hgetall(key)),
        ("RedisPool exclusive: PooledRedis.hgetall", lambda: exclusive_lean.hgetall(key)),
        ("RedisPool exclusive: raw connection() send+read", exclusive_raw),
        (f"RedisPool multiplex={multiplex}: PooledRedis.hgetall", lambda: shared_lean.hgetall(key)),
        (f"RedisPool multiplex={multiplex}: raw p.execute()", shared_raw),
        (f"RedisPool multiplex={multiplex}: redis.Redis.hgetall (handle)", lambda: shared_plain.hgetall(key)),
    ]
    lone = [
        ("exclusive: PooledRedis.hgetall", lambda: exclusive_lean.hgetall(key)),
        (f"multiplex={multiplex}: PooledRedis.hgetall", lambda: shared_lean.hgetall(key)),
        ("exclusive: raw connection() send+read", exclusive_raw),
        (f"multiplex={multiplex}: raw p.execute()", shared_raw),
    ]
    for _, op in concurrent:
        op()
    return concurrent, lone, shared


def measure(port, server_pid, key, *, multiplex=2, reps=7, commands=40_000, lone_reps=21, lone_commands=2_000,
            max_seconds=2.0, profile_n=0):
    closers = []
    try:
        concurrent, lone, shared = make_cases(port, key, multiplex, closers)
        for _, op in concurrent:  # warm-up: every pool opens its connections
            run_concurrent(op, 4_000, 0.5, server_pid)
        results = {name: {"rate": [], "cpu": [], "server": []} for name, _ in concurrent}
        lone_results = {name: {"wall": [], "cpu": []} for name, _ in lone}
        written = [0, 0]  # commands and writes on the shared connections, during the 200-greenlet reps only
        for rep in range(reps):
            shift = rep % len(concurrent)
            for name, op in concurrent[shift:] + concurrent[:shift]:
                shared.pop_stats()
                rate, cpu, server = run_concurrent(op, commands, max_seconds, server_pid)
                stats = shared.pop_stats()
                written[0] += stats[S.MUX_COMMANDS]
                written[1] += stats[S.MUX_BATCHES]
                results[name]["rate"].append(rate)
                results[name]["cpu"].append(cpu)
                results[name]["server"].append(server)
        for rep in range(lone_reps):  # short and many: one greenlet is at the mercy of the machine's other load
            shift = rep % len(lone)
            for name, op in lone[shift:] + lone[:shift]:
                wall, cpu = run_lone(op, lone_commands, max_seconds / 4)
                lone_results[name]["wall"].append(wall)
                lone_results[name]["cpu"].append(cpu)
        summary = {
            "greenlets": GREENLETS, "multiplex": multiplex, "reps": reps, "commands_per_rep": commands,
            "lone_reps": lone_reps, "lone_commands_per_rep": lone_commands,
            "concurrent": {name: {k: _spread(v) for k, v in r.items()} for name, r in results.items()},
            "lone": {name: {k: _spread(v) for k, v in r.items()} for name, r in lone_results.items()},
            "mean_batch": written[0] / max(1, written[1]),
        }
        if profile_n:
            summary["profile"] = profile_concurrent(concurrent[3][1], profile_n)
        return summary
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception:
                pass


def profile_concurrent(op, commands):
    """cProfile (CPU timer) of the multiplexed PooledRedis case: top functions by own time per command."""
    profiler = cProfile.Profile(time.process_time)
    per = commands // GREENLETS

    def worker():
        for _ in repeat(None, per):
            op()

    profiler.enable()
    gevent.joinall([gevent.spawn(worker) for _ in range(GREENLETS)], raise_error=True)
    profiler.disable()
    stats = pstats.Stats(profiler)
    n = per * GREENLETS
    rows = []
    for (filename, line, funcname), (_cc, nc, tt, _ct, _callers) in stats.stats.items():
        where = funcname if filename == "~" else f"{_short(filename)}:{line}({funcname})"
        rows.append((tt / n * 1e6, nc / n, where))
    rows.sort(reverse=True)
    return {"commands": n, "total_us_per_cmd": stats.total_tt / n * 1e6, "top": rows[:15]}


def _short(filename):
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    if "/pool/" in path:
        return "pool/" + path.split("/pool/", 1)[1]
    return path


def report(summary):
    """The table and the target verdicts, as lines."""
    out = []
    multiplex = summary["multiplex"]
    out.append(f"{summary['greenlets']} greenlets, HGETALL of a 10-field hash; {summary['reps']} interleaved reps of "
               f"up to {summary['commands_per_rep']} commands per case; median (min-max)")
    out.append(f"  {'case':<48} {'commands/s':>22} {'client CPU us/cmd':>22} {'redis CPU us/cmd':>20}")
    concurrent = summary["concurrent"]
    for name, r in concurrent.items():
        rate, cpu, server = r["rate"], r["cpu"], r["server"]
        out.append(f"  {name:<48} {rate['median']:>9,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f})"
                   f" {cpu['median']:>7.2f} ({cpu['min']:.2f}-{cpu['max']:.2f})"
                   f" {server['median']:>6.2f} ({server['min']:.2f}-{server['max']:.2f})")
    out.append(f"  mean batch on the shared connections (200 greenlets): {summary['mean_batch']:.1f} commands "
               "per write")
    out.append("")
    out.append(f"one greenlet alone: microseconds per HGETALL, {summary['lone_reps']} interleaved reps of "
               f"{summary['lone_commands_per_rep']} commands, median (min-max)")
    out.append(f"  {'case':<48} {'wall us':>20} {'cpu us':>20}")
    for name, r in summary["lone"].items():
        out.append(f"  {name:<48} {r['wall']['median']:>7.2f} ({r['wall']['min']:.2f}-{r['wall']['max']:.2f})"
                   f" {r['cpu']['median']:>7.2f} ({r['cpu']['min']:.2f}-{r['cpu']['max']:.2f})")
    out.append("")
    stock = concurrent["redis-py ConnectionPool: Redis.hgetall"]["rate"]["median"]
    pooled = concurrent[f"RedisPool multiplex={multiplex}: PooledRedis.hgetall"]
    raw = concurrent[f"RedisPool multiplex={multiplex}: raw p.execute()"]

    def verdict(ok):
        return "MET" if ok else "NOT MET"

    ratio = pooled["rate"]["median"] / stock
    out.append(f"target multiplexed PooledRedis >= {TARGET_THROUGHPUT_X:.0f}x redis-py ConnectionPool throughput: "
               f"{verdict(ratio >= TARGET_THROUGHPUT_X)} ({ratio:.1f}x)")
    out.append(f"target multiplexed PooledRedis <= {TARGET_POOLED_CPU_US:.0f} us client CPU/cmd: "
               f"{verdict(pooled['cpu']['median'] <= TARGET_POOLED_CPU_US)} ({pooled['cpu']['median']:.2f} us)")
    out.append(f"target raw shared path <= {TARGET_RAW_CPU_US:.0f} us client CPU/cmd: "
               f"{verdict(raw['cpu']['median'] <= TARGET_RAW_CPU_US)} ({raw['cpu']['median']:.2f} us)")
    for label, r in (("PooledRedis", pooled), ("raw", raw)):
        out.append(f"target redis-server <= {TARGET_SERVER_CPU_US:.0f} us CPU/cmd, multiplexed {label}: "
                   f"{verdict(r['server']['median'] <= TARGET_SERVER_CPU_US)} ({r['server']['median']:.2f} us)")
    lone = summary["lone"]
    pairs = ((f"multiplex={multiplex}: PooledRedis.hgetall", "exclusive: PooledRedis.hgetall"),
             (f"multiplex={multiplex}: raw p.execute()", "exclusive: raw connection() send+read"))
    for shared_name, exclusive_name in pairs:
        for what in ("wall", "cpu"):
            pct = 100 * (lone[shared_name][what]["median"] / lone[exclusive_name][what]["median"] - 1)
            best = 100 * (lone[shared_name][what]["min"] / lone[exclusive_name][what]["min"] - 1)
            out.append(f"target one greenlet within {TARGET_LONE_PCT:.0f}% of exclusive, {shared_name} vs "
                       f"{exclusive_name} ({what}): {verdict(pct <= TARGET_LONE_PCT)} ({pct:+.1f}% median, "
                       f"{best:+.1f}% best rep)")
    profile = summary.get("profile")
    if profile:
        out.append("")
        out.append(f"cProfile of the multiplexed PooledRedis case ({profile['commands']} commands, CPU timer, "
                   f"{profile['total_us_per_cmd']:.1f} us/cmd under the profiler): top functions by own time")
        for us, calls, where in profile["top"]:
            out.append(f"  {us:>7.2f} us  x{calls:<5.3g} {where}")
    return out
