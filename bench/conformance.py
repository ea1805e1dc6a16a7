"""Conformance run: redis-py's own sync test suite through greenpool, beside redis-py's own pool.

Run: ``python -m bench.conformance [--arms stock,redispool,pooledredis,multiplexed] [-k EXPR] [--json PATH]``

It downloads the sdist of the installed redis-py version once (``pip download --no-deps --no-binary :all:``,
from the configured package index) into ``--cache-dir``, and for each arm starts a private ``redis-server``
on a free loopback port (never 6379) and runs the suite in its own pytest subprocess under gevent's
monkey patching, with ``bench/conformance_support/pool_plugin.py`` choosing the pool:

- ``stock``: redis-py's ``ConnectionPool``, the baseline;
- ``redispool``: every client redis-py's ``_get_client`` builds (the ``r``, ``decoded_r``, ``r2``,
  ``r_timeout``... fixtures and the tests that call it) is ``redis.Redis(connection_pool=RedisPool(...))``
  with the same keyword arguments;
- ``pooledredis``: the same with ``pool.PooledRedis`` as the client class;
- ``multiplexed``: ``RedisPool(multiplex=2)``; reported as not available when ``RedisPool`` refuses the option.

It prints a table of pass/fail/error/skip counts per arm (all tests, and the tests that built a client
through ``_get_client``, the ones a pool arm changes), then every test that passes on ``stock`` and fails
on another arm, with the failure's one-line message. ``--json`` writes all of it, tracebacks included.
Every arm is bounded in time (``--arm-timeout``), and so is the whole run (``--total-timeout``).
"""
from gevent import monkey

monkey.patch_all()  # before redis-py makes any socket

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.conformance_support.pool_plugin import multiplex_unavailable_reason  # noqa: E402
from pool.server import RedisProcess, free_port  # noqa: E402

ARMS = ("stock", "redispool", "pooledredis", "multiplexed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT = os.path.join(ROOT, "bench", "conformance_support")
DEFAULT_CACHE = os.path.join(ROOT, "bench", "results", "conformance")

# redis-py's sync test files that run: each has tests that build their client through tests.conftest._get_client
# (the r, decoded_r, r2, r_timeout, r_with_keyspace_notifications fixtures, or a direct call), which is where a
# pool arm puts its pool. Tests in them that build their own ConnectionPool run too, unchanged in every arm,
# and are left out of the comparison, which counts only the tests that built a client through _get_client.
INCLUDED_FILES = {
    "test_commands.py": "the command surface on r / decoded_r (the bulk)",
    "test_pipeline.py": "pipelines and MULTI/EXEC, WATCH",
    "test_pubsub.py": "pub/sub, including health checks and reconnection",
    "test_scripting.py": "EVAL, Script objects",
    "test_function.py": "FUNCTION / FCALL",
    "test_lock.py": "redis-py's Lock on r",
    "test_monitor.py": "MONITOR (session state)",
    "test_encoding.py": "encoders and decode_responses",
    "test_command_parser.py": "COMMAND metadata through r",
    "test_retry.py": "retry_on_error / retry_on_timeout / retry= given to _get_client",
    "test_multiprocessing.py": "a client used across fork()",
    "test_connection_pool.py": "only its r tests count: busy loading, READONLY/OOM errors, AUTH, health checks",
    "test_connection.py": "only its r tests count: invalid response, parser resume",
    "test_hash.py": "hash field expiry (needs Redis >= 7.3: skipped by redis-py on 7.0)",
    "test_cache.py": "client-side caching (needs Redis >= 7.4: skipped by redis-py on 7.0)",
    "test_command_policies.py": "request policies (needs Redis >= 8.0)",
    "test_keyspace_notifications.py": "keyspace notifications (needs Redis >= 8.x for its client tests)",
    "test_himport_integration.py": "HIMPORT (needs Redis >= 8.9)",
}
# The rest, and why.
EXCLUDED_FILES = {
    "test_cluster.py": "needs a Redis Cluster",
    "test_cluster_transaction.py": "needs a Redis Cluster",
    "test_sentinel.py": "needs Redis Sentinel",
    "test_sentinel_managed_connection.py": "Sentinel connection internals (mocked)",
    "test_ssl.py": "needs a TLS Redis",
    "test_connect.py": "starts its own TCP/unix/TLS servers and connections",
    "test_credentials.py": "imports redis_entraid, not on the package index here",
    "test_search.py": "Redis Stack module (RediSearch); imports numpy",
    "test_search_aggregation.py": "RediSearch query builder units, no Redis client",
    "test_search_querystring.py": "RediSearch query builder units, no Redis client",
    "test_search_result.py": "RediSearch result units, no Redis client",
    "test_vsets.py": "Redis 8 vector sets; imports numpy",
    "test_bloom.py": "Redis Stack module (RedisBloom)",
    "test_json.py": "Redis Stack module (RedisJSON)",
    "test_timeseries.py": "Redis Stack module (RedisTimeSeries)",
    "test_max_connections_error.py": "builds its own ConnectionPool on purpose",
    "test_defaults.py": "builds its own ConnectionPool on purpose",
    "test_himport.py": "HIMPORT units on mocked or own pools, partly asyncio",
    "test_background.py": "no Redis client: background scheduler units (asyncio)",
    "test_backoff.py": "no Redis client: backoff units",
    "test_client.py": "no Redis client: client construction units",
    "test_crc.py": "no Redis client: CRC units",
    "test_data_structure.py": "no Redis client: data structure units",
    "test_driver_info.py": "no Redis client: driver info units",
    "test_event.py": "no Redis client: event dispatcher units (partly asyncio)",
    "test_exceptions.py": "no Redis client: exception units",
    "test_helpers.py": "no Redis client: helper units",
    "test_legacy_responses_arg.py": "no Redis client: response-callback matrices (partly asyncio)",
    "test_utils.py": "no Redis client: utility units",
}
EXCLUDED_DIRS = {
    "test_asyncio/": "asyncio client",
    "test_multidb/": "needs two clusters and two standalone servers",
    "test_scenario/": "needs a Redis Enterprise endpoint",
    "maint_notifications/": "Redis Enterprise maintenance notifications, proxy-driven",
    "test_http/": "HTTP client of the Entra ID helpers, no Redis",
    "test_auth/": "token manager units, no Redis",
    "test_observability/": "OpenTelemetry units, no standalone Redis client",
    "test_parsers/": "parser units, no Redis",
}
# redis-py's own markers for tests that need servers this run does not start.
MARKERS = ("not onlycluster and not redismod and not ssl and not replica and not cp_integration"
           " and not multidb_integration")
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
BAD = ("failed", "error")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (default: all)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select tests")
    parser.add_argument("--files", default=None, help="comma-separated test files instead of the default selection")
    parser.add_argument("--json", dest="json_path", default=None, help="write the results here")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help="sdist cache and pytest logs (default: %(default)s)")
    parser.add_argument("--arm-timeout", type=float, default=300.0, help="seconds per arm (default: %(default)s)")
    parser.add_argument("--total-timeout", type=float, default=900.0, help="seconds for the run (default: %(default)s)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 2 when a test passes on stock and fails on another arm")
    args = parser.parse_args(argv)
    arms = list(dict.fromkeys(a.strip() for a in args.arms.split(",") if a.strip()))
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        parser.error(f"--arms takes a comma-separated subset of {', '.join(ARMS)}; got {args.arms!r}")
    if args.arm_timeout <= 0 or args.total_timeout <= 0:
        parser.error("--arm-timeout and --total-timeout must be > 0")
    args.arms = arms
    return args


# -- the suite ----------------------------------------------------------------------------------------
def redis_py_version():
    return importlib.metadata.version("redis")


def ensure_sdist(cache_dir, version):
    """The extracted sdist of redis-py ``version``: downloaded and unpacked once into ``cache_dir``."""
    root = os.path.join(cache_dir, f"redis-{version}")
    if os.path.isfile(os.path.join(root, "tests", "conftest.py")):
        return root
    os.makedirs(cache_dir, exist_ok=True)
    archive = os.path.join(cache_dir, f"redis-{version}.tar.gz")
    if not os.path.isfile(archive):
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                   f"redis=={version}", "-d", cache_dir]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not os.path.isfile(archive):
            raise SystemExit(f"could not download the redis-py {version} sdist:\n{done.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(cache_dir, filter="data")
    return root


def selected_files(sdist, files=None):
    """Test files (relative to the sdist root) that exist in this sdist: the given ones, or INCLUDED_FILES.

    A top-level test file in neither list (a newer redis-py) is named on stderr so the lists can be updated."""
    present = {n for n in os.listdir(os.path.join(sdist, "tests")) if n.startswith("test_") and n.endswith(".py")}
    if files:
        names = [f.removeprefix("tests/") for f in files]
        missing = [n for n in names if n not in present]
        if missing:
            raise SystemExit(f"not in redis-py's tests/: {', '.join(missing)}")
        return [f"tests/{n}" for n in names]
    unlisted = sorted(present - set(INCLUDED_FILES) - set(EXCLUDED_FILES))
    if unlisted:
        print(f"note: test files in neither INCLUDED_FILES nor EXCLUDED_FILES (not run): {', '.join(unlisted)}",
              file=sys.stderr)
    return [f"tests/{n}" for n in INCLUDED_FILES if n in present]


def redis_server_version(binary):
    out = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip()


# -- one arm --------------------------------------------------------------------------------------------
def run_arm(arm, sdist, files, args, time_left):
    """Run one arm in its own pytest subprocess against a fresh redis-server; returns the arm's result dict."""
    logs = os.path.join(args.cache_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    results_path = os.path.join(logs, f"{arm}.jsonl")
    status_path = os.path.join(logs, f"{arm}.status.json")
    log_path = os.path.join(logs, f"{arm}.log")
    for path in (results_path, status_path):
        if os.path.exists(path):
            os.remove(path)
    budget = min(args.arm_timeout, time_left)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"conformance-{arm}-") as data_dir:
        server = RedisProcess(data_dir, port=free_port(), extra_args=["--enable-debug-command", "local"])
        server.start()
        try:
            command = [sys.executable, os.path.join(SUPPORT, "run_pytest.py"), "-p", "pool_plugin",
                       "-p", "no:cacheprovider", "-q", "--rootdir", sdist,
                       "--redis-url", server.url, "--redis-mod-url", f"redis://127.0.0.1:{free_port()}",
                       "-m", MARKERS]
            if args.keyword:
                command += ["-k", args.keyword]
            command += files
            env = dict(os.environ, CONFORMANCE_ARM=arm, CONFORMANCE_RESULTS=results_path,
                       CONFORMANCE_STATUS=status_path)
            returncode, timed_out = _run_bounded(command, sdist, env, log_path, budget)
        finally:
            server.stop()
    status = _read_json(status_path) or {}
    records = _read_records(results_path)
    result = {"arm": arm, "seconds": round(time.monotonic() - started, 1), "returncode": returncode,
              "log": log_path, "records": records}
    if status.get("available") is False:
        result["status"] = status["reason"]
    elif timed_out:
        result["status"] = f"timed out after {budget:.0f} s ({len(records)} tests finished)"
    elif not status:
        result["status"] = f"pytest did not start (exit {returncode}); see {log_path}"
    elif returncode == 5:  # pytest: no tests collected
        result["status"] = "no test selected"
    elif returncode not in (0, 1) or not records:
        result["status"] = f"pytest exit {returncode} with {len(records)} results; see {log_path}"
    else:
        result["status"] = "ok"
    return result


def _run_bounded(command, cwd, env, log_path, budget):
    """Run ``command`` in its own session, output to ``log_path``; kill the session after ``budget`` seconds."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return process.wait(budget), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the whole session: pytest and any forked test child
            process.wait()
            return process.returncode, True
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_records(path):
    records = {}
    try:
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # blank, or cut short by a kill at the time bound
                    continue
                records[record["nodeid"]] = record
    except OSError:
        pass
    return records


# -- the report -----------------------------------------------------------------------------------------
def counts(records, through_pool_only=False):
    tally = dict.fromkeys(OUTCOMES, 0)
    for record in records.values():
        if not through_pool_only or record["clients"]:
            tally[record["outcome"]] += 1
    tally["total"] = sum(tally[o] for o in OUTCOMES)
    return tally


def compare(stock, other):
    """What differs from stock: ``regressions`` (pass on stock, fail here), ``improvements`` (the reverse),
    ``also_failing`` (fail on both, with another message here) and ``missing`` (passed on stock, not run here)."""
    diff = {"regressions": [], "improvements": [], "also_failing": []}
    for nodeid, record in sorted(other.items()):
        base = stock.get(nodeid)
        if base is None:
            continue
        if base["outcome"] == "passed" and record["outcome"] in BAD:
            diff["regressions"].append(_row(record))
        elif base["outcome"] in BAD and record["outcome"] == "passed":
            diff["improvements"].append(_row(base))
        elif base["outcome"] in BAD and record["outcome"] in BAD and base.get("message") != record.get("message"):
            diff["also_failing"].append(dict(_row(record), stock_message=base.get("message", "")))
    diff["missing"] = sorted(n for n, r in stock.items() if r["outcome"] == "passed" and n not in other)
    return diff


def _row(record):
    return {"nodeid": record["nodeid"], "outcome": record["outcome"], "message": record.get("message", "")}


def print_report(results, out=sys.stdout):
    header = (f"{'arm':<12} {'status':<10} {'scope':<10} {'tests':>6} {'passed':>7} {'failed':>7} {'error':>6} "
              f"{'skipped':>8} {'xfail':>6} {'seconds':>8}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for result in results:
        status = "ok" if result["status"] == "ok" else "-"
        if result["status"] != "ok" and not result["records"]:
            print(f"{result['arm']:<12} {result['status']}", file=out)
            continue
        for scope, only in (("all", False), ("via pool", True)):
            c = counts(result["records"], only)
            print(f"{result['arm']:<12} {status:<10} {scope:<10} {c['total']:>6} {c['passed']:>7} {c['failed']:>7} "
                  f"{c['error']:>6} {c['skipped']:>8} {c['xfailed'] + c['xpassed']:>6} {result['seconds']:>8.1f}",
                  file=out)
        if result["status"] != "ok":
            print(f"{'':<12} {result['status']}", file=out)
    stock = next((r for r in results if r["arm"] == "stock"), None)
    if stock is None:
        return
    for result in results:
        if result["arm"] == "stock" or not result["records"]:
            continue
        diff = compare(stock["records"], result["records"])
        arm = result["arm"]
        print(f"\n{arm}: {len(diff['regressions'])} pass on stock and fail here", file=out)
        for row in diff["regressions"]:
            print(f"  {row['outcome']:<6} {row['nodeid']}\n         {row['message'][:160]}", file=out)
        if diff["also_failing"]:
            print(f"{arm}: {len(diff['also_failing'])} fail on stock too, with another message here", file=out)
            for row in diff["also_failing"]:
                print(f"  {row['outcome']:<6} {row['nodeid']}\n         here:  {row['message'][:150]}\n"
                      f"         stock: {row['stock_message'][:150]}", file=out)
        if diff["improvements"]:
            print(f"{arm}: {len(diff['improvements'])} fail on stock and pass here", file=out)
            for row in diff["improvements"]:
                print(f"  {row['nodeid']}", file=out)
        if diff["missing"] and result["status"] != "ok":
            print(f"{arm}: {len(diff['missing'])} passed on stock and did not run here", file=out)


def to_json(results, meta):
    stock = next((r for r in results if r["arm"] == "stock"), None)
    arms = {}
    for result in results:
        entry = {k: result[k] for k in ("status", "seconds", "returncode", "log")}
        entry["counts"] = counts(result["records"])
        entry["counts_via_pool"] = counts(result["records"], True)
        entry["tests"] = sorted(result["records"].values(), key=lambda r: r["nodeid"])
        if stock is not None and result is not stock and result["records"]:
            entry.update(compare(stock["records"], result["records"]))
        arms[result["arm"]] = entry
    return dict(meta, arms=arms)


def _not_run(arm, status):
    return {"arm": arm, "status": status, "seconds": 0.0, "returncode": None, "log": None, "records": {}}


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds run_arm: the pytest session is killed, redis-server stopped


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    version = redis_py_version()
    sdist = ensure_sdist(args.cache_dir, version)
    files = selected_files(sdist, args.files.split(",") if args.files else None)
    binary = RedisProcess(tempfile.gettempdir(), port=1).binary  # the binary run_arm's servers will use
    meta = {"redis_py": version, "redis_server": redis_server_version(binary), "files": files,
            "markers": MARKERS, "keyword": args.keyword}
    print(f"redis-py {version} suite ({len(files)} files) against redis-server {meta['redis_server']}, "
          f"arms: {', '.join(args.arms)}", flush=True)
    results = []
    for arm in args.arms:
        time_left = args.total_timeout - (time.monotonic() - started)
        if arm == "multiplexed" and (reason := multiplex_unavailable_reason()) is not None:
            results.append(_not_run(arm, reason))
        elif time_left <= 1:
            results.append(_not_run(arm, "not run: --total-timeout reached"))
        else:
            results.append(run_arm(arm, sdist, files, args, time_left))
        done = results[-1]
        print(f"  {arm}: {done['status']} ({len(done['records'])} tests, {done['seconds']:.0f} s)", flush=True)
    print(file=sys.stdout)
    print_report(results)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(to_json(results, meta), f, indent=1)
        print(f"\nresults written to {args.json_path}")
    if any(r["status"] != "ok" and not r["status"].startswith("not available") for r in results):
        return 1
    if args.fail_on_regression and "stock" in args.arms:
        stock = results[args.arms.index("stock")]["records"]
        if any(compare(stock, r["records"])["regressions"] for r in results if r["arm"] != "stock"):
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
