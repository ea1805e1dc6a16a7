"""GET /metrics: prometheus_client's multiprocess mode under real gunicorn (2 gevent workers) against a real
redis-server; the pool's stats turned into metrics by sampling; the logs of the pool in gunicorn's error log.
"""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from pool import stats as S
from pool.testing import Dataset, Load, wait_until
from wsgi_app.metrics import HTTP_BUCKETS, WAIT_BUCKETS, ServiceMetrics, histogram_values, observe_waits
from wsgi_app.service import create_app

ROOT = Path(__file__).resolve().parent.parent

ROUTES = {"/", "/healthz", "/readyz", "/stats", "/metrics", "/hashes/{name}", "unmatched"}
SECRET = "s3cretkey"  # part of every hash name the tests use: it must never reach a label


def scrape(service):
    """``{(name, ((label, value), ...)): value}`` of one GET /metrics, and the raw text."""
    reply = service.request("GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    text = reply.body.decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples, text


def total(samples, name, **labels):
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(value for (sample, keys), value in samples.items() if sample == name and want <= set(keys))


def seed(admin, count=20):
    expected = {}
    for i in range(count):
        name = f"{SECRET}-{i}"
        expected[name] = {"name": name}
        admin.hset("greenpool:" + name, mapping=expected[name])
    return expected


def http_ok(samples):
    return total(samples, "greenpool_http_requests_total", method="GET", route="/hashes/{name}", status="200")


def pool_gauges(samples):
    return {name: total(samples, f"greenpool_pool_{name}") for name in ("size", "in_use", "idle", "waiting", "max")}


# -- real gunicorn, 2 workers ----------------------------------------------------------------------------------

def test_counters_gauges_and_labels_under_load(gunicorn_factory, redis_url, admin):
    """With 2 workers under load, the scraped request counter agrees with the requests sent (within the ones in
    flight during the scrape, exactly once the load stopped); the pool gauges return to idle values; no label
    holds a raw key; the private metrics directory is removed when the master exits. (POOL_MULTIPLEX=0: one
    checkout per request; the multiplexed counters are the next test's.)
    """
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "POOL_MAX_SIZE": 3, "METRICS_INTERVAL": 0.2,
                                    "POOL_MULTIPLEX": 0}, args=["--access-logfile", "-"], workers=2)
    clients = 12
    load = Load(service.port, Dataset.of(expected), clients=clients, max_requests=3000, max_seconds=30).start()
    load.wait_ok(300)
    # each worker writes its pool gauges at its first reading, up to METRICS_INTERVAL after it booted
    wait_until(lambda: pool_gauges(scrape(service)[0])["max"] == 6, 5, interval=0.05, what="both workers' gauges")
    for _ in range(3):  # scrapes land on either worker: each one sees both
        before = load.ok + len(load.failed)
        samples, _ = scrape(service)
        after = load.ok + len(load.failed)
        assert before <= http_ok(samples) <= after + clients
        gevent.sleep(0.05)
    busy = pool_gauges(samples)
    load.stop()
    assert load.failed == []
    assert busy["max"] == 6 and busy["size"] <= 6

    def idle():  # each worker's reading is up to METRICS_INTERVAL old: wait for readings taken after the load
        samples = scrape(service)[0]
        gauges = pool_gauges(samples)
        return (total(samples, "greenpool_pool_wait_seconds_count") >= load.ok  # one checkout per request
                and gauges["in_use"] == gauges["waiting"] == 0 and gauges["idle"] == gauges["size"] > 0)

    wait_until(idle, 5, interval=0.1, what="pool gauges back to idle")
    samples, text = scrape(service)
    assert http_ok(samples) == load.ok
    assert total(samples, "greenpool_http_request_duration_seconds_count", route="/hashes/{name}") == load.ok
    assert total(samples, "greenpool_pool_connections_created_total") >= 2
    assert SECRET not in text
    for (_, labels), _ in samples.items():
        labels = dict(labels)
        assert "route" not in labels or labels["route"] in ROUTES, labels
    assert re.search(r'"GET /hashes/\S+ HTTP/1.1" 200 \d+ "-" "[^"]*" \d+\n', service.log()), "access log with time"
    started = re.search(r"Metrics of all workers in (\S+) \(0 old files removed\)", service.log_path.read_text())
    metrics_dir = started.group(1)
    assert Path(metrics_dir).is_dir()
    service.stop()
    assert not Path(metrics_dir).exists(), "the private metrics directory outlives the master"


MUX_COUNTERS = ("mux_commands", "mux_batches", "mux_connections_created", "mux_replies_dropped",
                "mux_cancelled_unsent", "exclusive_checkouts")


def mux_counters(samples):
    return {name: total(samples, f"greenpool_pool_{name}_total") for name in MUX_COUNTERS}


def test_multiplexing_counters_under_load(gunicorn_factory, redis_url, admin):
    """With 2 workers on the default multiplexed path: after a checked load, /metrics counts every request's
    command as multiplexed, in fewer writes than commands, on 1 or 2 shared connections per worker and no
    exclusive checkout; the shared connections show as in use (the multiplexer holds them). A request cancelled
    by REQUEST_TIMEOUT while Redis is paused counts one reply dropped and closes no connection. /stats shows the
    same keys for the worker that answers."""
    expected = seed(admin)
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "METRICS_INTERVAL": 0.1, "REQUEST_TIMEOUT": 0.3},
                               workers=2)
    load = Load(service.port, Dataset.of(expected), clients=32, max_requests=4000, max_seconds=30).start()
    load.join(timeout=40)
    assert load.failed == [] and load.ok == 4000

    def caught_up():  # each worker's reading is up to METRICS_INTERVAL old
        return mux_counters(scrape(service)[0])["mux_commands"] >= load.ok

    wait_until(caught_up, 5, interval=0.1, what="the multiplexed commands counted")
    samples = scrape(service)[0]
    counters, gauges = mux_counters(samples), pool_gauges(samples)
    assert counters["mux_commands"] == load.ok  # one HGETALL per request; /healthz, /metrics, /stats need no Redis
    assert 0 < counters["mux_batches"] <= counters["mux_commands"]
    assert 2 <= counters["mux_connections_created"] <= 4 and counters["exclusive_checkouts"] == 0
    assert counters["mux_replies_dropped"] == counters["mux_cancelled_unsent"] == 0
    assert gauges["in_use"] == gauges["size"] == counters["mux_connections_created"] and gauges["idle"] == 0
    assert total(samples, "greenpool_pool_connections_created_total") == counters["mux_connections_created"]
    worker = service.request("GET", "/stats").json()["pool"]
    assert set(MUX_COUNTERS) - {"mux_connections_created"} | {"mux_connections_num"} <= set(worker)
    assert worker["mux_commands"] >= 1 and worker["exclusive_checkouts"] == 0

    admin.client_pause(800)  # the next request's HGETALL is written, then waits: REQUEST_TIMEOUT cancels it
    assert service.request("GET", f"/hashes/{SECRET}-1").status == 504

    def dropped():
        samples = scrape(service)[0]
        return (mux_counters(samples)["mux_replies_dropped"] == 1
                and total(samples, "greenpool_http_requests_total", status="504") == 1)

    wait_until(dropped, 5, interval=0.1, what="the cancelled request's reply dropped")
    samples = scrape(service)[0]
    assert total(samples, "greenpool_pool_connections_closed_total") == 0
    assert total(samples, "greenpool_pool_connections_created_total") == counters["mux_connections_created"]
    print(f"multiplexed: {counters['mux_commands']:.0f} commands in {counters['mux_batches']:.0f} writes "
          f"({counters['mux_commands'] / counters['mux_batches']:.1f} per write) on "
          f"{counters['mux_connections_created']:.0f} shared connections")


def test_sigkilled_worker_leaves_no_live_gauges(gunicorn_factory, redis_url, tmp_path):
    """After a worker is SIGKILLed and replaced, the metrics directory no longer holds its live gauges (the
    master's child_exit removed them), so the fleet's gauges count live workers only; its counters stay. Stale
    files of an earlier run are removed at start.
    """
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "gauge_livesum_999999.db").write_bytes(b"stale")
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                                    "METRICS_INTERVAL": 0.1}, workers=2)
    assert not (metrics_dir / "gauge_livesum_999999.db").exists()
    workers = service.wait_workers(2)
    wait_until(lambda: all((metrics_dir / f"gauge_livesum_{pid}.db").exists() for pid in workers), 5,
               interval=0.02, what="both workers' live gauges written")
    wait_until(lambda: pool_gauges(scrape(service)[0])["max"] == 20, 5, interval=0.02, what="2 workers' capacity")
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    service.wait_workers(2, exclude={victim})
    assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    assert (metrics_dir / f"counter_{victim}.db").exists(), "a dead worker's counters still count"
    wait_until(lambda: pool_gauges(scrape(service)[0])["max"] == 20, 5, interval=0.02,
               what="capacity of the live workers only")


def test_leaks_and_discards_in_error_log(gunicorn_factory, redis_url, admin):
    """A borrow held past leak_threshold and a connection discarded by a request timeout are logged in
    gunicorn's error log with the worker's pid, and counted in /metrics (exclusive connections: POOL_MULTIPLEX=0).
    """
    service = gunicorn_factory(env={"REDIS_URL": redis_url + "?leak_threshold=0.05", "REQUEST_TIMEOUT": 0.3,
                                    "METRICS_INTERVAL": 0.1, "POOL_MULTIPLEX": 0}, workers=1)
    (worker,) = service.wait_workers(1)
    assert service.request("GET", "/readyz").status == 200  # a connection is open and idle
    admin.client_pause(800)  # the service's next command waits: the borrow outlives leak_threshold and the request
    assert service.request("GET", f"/hashes/{SECRET}").status == 504
    held = re.compile(rf"\[{worker}\] \[WARNING\] pool 'web-{worker}': connection held for .*\nborrowed at:\n")
    discarded = re.compile(rf"\[{worker}\] \[WARNING\] pool 'web-{worker}': discarding a connection \(cancelled\)")
    wait_until(lambda: held.search(service.log()) and discarded.search(service.log()), 5, interval=0.02,
               what=service.log())

    def counted():
        samples = scrape(service)[0]
        return (total(samples, "greenpool_pool_leaks_reported_total") == 1
                and total(samples, "greenpool_pool_connections_closed_total", reason="cancelled") == 1)

    wait_until(counted, 5, interval=0.1, what="leak and discard counted")
    samples = scrape(service)[0]
    assert total(samples, "greenpool_http_requests_total", route="/hashes/{name}", status="504") == 1


# -- in process ------------------------------------------------------------------------------------------------

def test_metrics_in_process_without_multiproc_dir(redis_url):
    """Outside gunicorn (no PROMETHEUS_MULTIPROC_DIR) /metrics serves this process's own metrics."""
    import io

    app = create_app({"REDIS_URL": redis_url})
    try:
        for path in ("/healthz", f"/hashes/{SECRET}", "/nowhere", "/metrics"):
            captured = {}
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
            body = b"".join(app(environ, lambda status, headers, captured=captured: captured.update(dict(headers))))
        text = body.decode()
        assert captured["Content-Type"].startswith("text/plain")
        assert 'greenpool_http_requests_total{method="GET",route="/hashes/{name}",status="404"} 1.0' in text
        assert 'greenpool_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
        assert "greenpool_pool_size 1.0" in text and SECRET not in text
    finally:
        app.pool.close(1.0)


class FakePool:
    def __init__(self):
        self.stats = dict.fromkeys(S.GAUGES + S.COUNTERS, 0)

    def get_stats(self):
        return dict(self.stats)


def test_sampling_turns_stats_into_deltas():
    """Counters advance by what changed between readings, also across a pop_stats() reset; gauges are set."""
    fake = FakePool()
    metrics = ServiceMetrics("", lambda: fake, interval=0)
    registry = metrics._get().instruments.scrape_registry
    fake.stats.update({S.POOL_SIZE: 3, S.POOL_IN_USE: 2, S.REQUESTS_NUM: 10, S.REQUESTS_QUEUED: 4,
                       S.REQUESTS_WAIT_MS: 40, S.DISCARDED_LIFETIME: 1})
    metrics.sample()
    metrics.sample()  # nothing changed: nothing added
    fake.stats.update({S.POOL_IN_USE: 0, S.REQUESTS_NUM: 2, S.REQUESTS_QUEUED: 0, S.REQUESTS_WAIT_MS: 0,
                       S.DISCARDED_LIFETIME: 0})  # pop_stats() reset the counters
    metrics.sample()
    value = registry.get_sample_value
    assert value("greenpool_pool_size") == 3 and value("greenpool_pool_in_use") == 0
    assert value("greenpool_pool_connections_closed_total", {"reason": "lifetime"}) == 1
    assert value("greenpool_pool_wait_seconds_count") == 12
    assert value("greenpool_pool_wait_seconds_bucket", {"le": "0.0"}) == 8
    assert value("greenpool_pool_wait_seconds_bucket", {"le": "0.01"}) == 12  # 4 waits of 10 ms on average
    assert value("greenpool_pool_wait_seconds_sum") == pytest.approx(0.04)


@pytest.mark.parametrize("interval", [1.0, 0])
def test_request_latencies_fold_like_observe(interval):
    """Latencies counted per request and folded by a reading give the buckets and sum ``observe()`` would (guards
    the histogram internals the fold relies on); with no sampler (interval 0) they are in the histogram at once."""
    metrics = ServiceMetrics("", lambda: None, interval=interval)
    value = metrics._get().instruments.scrape_registry.get_sample_value
    route = {"method": "GET", "route": "/"}
    latencies = [0.0, 1e-9, 0.001, 0.0042, 0.01, 0.0100001, 0.3, 2.5, 10.0, 99.0]  # bounds, between, above all
    for seconds in latencies:
        metrics.observe("GET", "/", 200, seconds)
    count = value("greenpool_http_request_duration_seconds_count", route)
    assert count == (len(latencies) if interval == 0 else None)  # sampled: nothing before the next reading
    metrics.sample()
    for bound in (*HTTP_BUCKETS, float("inf")):
        got = value("greenpool_http_request_duration_seconds_bucket", dict(route, le=floatToGoString(bound)))
        assert got == sum(1 for seconds in latencies if seconds <= bound), bound
    assert value("greenpool_http_request_duration_seconds_sum", route) == pytest.approx(sum(latencies))


@pytest.mark.parametrize("free, queued, waited", [(5, 0, 0.0), (0, 3, 0.3), (7, 2, 9.0), (0, 0, 0.5)])
def test_observe_waits_matches_observe(free, queued, waited):
    """The O(1) batch recording gives the samples of ``observe()`` once per checkout (guards the histogram
    internals it relies on across prometheus_client upgrades)."""
    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    batch = Histogram("w", "w", buckets=WAIT_BUCKETS, registry=registry_a)
    single = Histogram("w", "w", buckets=WAIT_BUCKETS, registry=registry_b)
    observe_waits(batch, free, queued, waited)
    for _ in range(free):
        single.observe(0.0)
    for _ in range(queued):
        single.observe(waited / queued)

    def samples(registry):
        return {(s.name, tuple(s.labels.items())): round(s.value, 9) for m in registry.collect() for s in m.samples
                if not s.name.endswith("_created")}

    if queued or not waited:
        assert samples(registry_a) == samples(registry_b)
    else:  # a wait that ended after its checkout was counted in an earlier reading: only the sum grows
        assert registry_a.get_sample_value("w_sum") == waited and registry_a.get_sample_value("w_count") == 0


def test_prometheus_client_internals_the_folding_relies_on():
    """The private prometheus_client attributes that wsgi_app.metrics reads (a histogram's ``_sum`` and
    ``_buckets`` value objects, and ``values.ValueClass``/``values.MutexValue`` telling the value class apart)
    are still there and mean what they meant: if an upgrade moves them, this fails by name (setup.cfg caps the
    version at the ones tested)."""
    from prometheus_client import values

    registry = CollectorRegistry()
    histogram = Histogram("internals", "internals", ("route",), buckets=HTTP_BUCKETS, registry=registry)
    child = histogram.labels("/")
    try:
        sum_, buckets = histogram_values(child)
    except AttributeError as error:
        pytest.fail(f"prometheus_client moved a histogram's _sum/_buckets ({error}): update wsgi_app/metrics.py")
    assert len(buckets) == len(HTTP_BUCKETS) + 1, "one value object per bucket, +Inf last"
    sum_.inc(0.5)
    buckets[len(HTTP_BUCKETS)].inc(2)
    assert registry.get_sample_value("internals_sum", {"route": "/"}) == 0.5
    assert registry.get_sample_value("internals_count", {"route": "/"}) == 2
    assert registry.get_sample_value("internals_bucket", {"route": "/", "le": "+Inf"}) == 2
    assert isinstance(values.ValueClass, type) and isinstance(values.MutexValue, type), \
        "prometheus_client.values no longer names its value classes: update ServiceMetrics._get"
    assert values.ValueClass is values.MutexValue  # this test process has no PROMETHEUS_MULTIPROC_DIR


def test_multiproc_dir_set_after_prometheus_client_import_is_refused(tmp_path):
    """A PROMETHEUS_MULTIPROC_DIR that prometheus_client did not see at import (it picked the single-process value
    class) is refused with a RuntimeError saying so, not silently left unshared between workers."""
    metrics = ServiceMetrics(str(tmp_path), lambda: None)
    with pytest.raises(RuntimeError, match="set after prometheus_client was imported"):
        metrics.sample()


def test_counting_writes_the_multiprocess_file_as_inc_does(tmp_path):
    """``wsgi_app.metrics.counting`` writes a counter child's value straight to this process's file through the
    private ``_value``, ``_file`` and ``_key`` of prometheus_client's multiprocess value class: in a process with
    PROMETHEUS_MULTIPROC_DIR (set before the import, as gunicorn.conf.py does), the files then read back what
    ``inc()`` would have written. If an upgrade moves those attributes, this fails by name."""
    script = """
import sys
from prometheus_client import CollectorRegistry, Counter, multiprocess
from wsgi_app.metrics import counting
child = Counter("counted", "counted", ("route",)).labels("/")
assert getattr(child._value, "_multiprocess", False), "not the multiprocess value class"
for name in ("_value", "_file", "_key", "_timestamp"):
    assert hasattr(child._value, name), f"prometheus_client moved {name}: update wsgi_app.metrics.counting"
add_one = counting(child)
assert add_one != child.inc
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
for _ in range(3):
    add_one()
print(registry.get_sample_value("counted_total", {"route": "/"}))
child.inc(2)
print(registry.get_sample_value("counted_total", {"route": "/"}))
"""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3.0", "5.0"], "written at once, and inc() goes on from it"
