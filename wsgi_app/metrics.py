"""Prometheus metrics for the service, summed over all gunicorn workers by ``prometheus_client``'s multiprocess mode.

Each worker writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py creates a
private directory when it is unset); ``GET /metrics`` in any worker reads all the files. The master only prepares the
directory and, in ``child_exit``, removes the live gauges of a worker that is gone (``mark_process_dead``).

Nothing is added to the pool's checkout path. About once a second a greenlet in each worker reads the pool's
``get_stats()``, sets the gauges and advances the counters by the change since the last reading; the worker that
answers a scrape takes one more reading first. HTTP requests are counted as they finish, through label children
bound once per (method, route, status): one counter increment per request (``counting``), written to the worker's
file at once (a scrape answered by any worker sees every request already answered). Their latencies are counted in
a plain list per (method, route) (the sum and one slot per bucket) and folded into the histogram's values by the
same readings (sampler, scrape, ``worker_exit``): the histogram of another worker is up to ``METRICS_INTERVAL``
old, and a SIGKILLed worker's last interval of latencies is lost (its request counts are not).

The metrics objects are built lazily in each process that records something (never in gunicorn's master).
"""
import glob
import logging
import os
from bisect import bisect_left

import gevent
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.exposition import choose_encoder

from pool import forks
from pool import stats as S

__all__ = ["ServiceMetrics", "mark_process_dead", "prepare_dir"]

log = logging.getLogger(__name__)

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# le="0.0" counts the checkouts that found a connection at once, without queueing.
WAIT_BUCKETS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "POST", "OPTIONS"})  # any other: "other"
UNMATCHED = "unmatched"  # the route label of a path no route serves (404)


# Pool gauges: livesum = the fleet total over live workers (a dead worker's value leaves with it).
_GAUGES = (
    (S.POOL_SIZE, "greenpool_pool_size", "Connections open or being opened, all live workers"),
    (S.POOL_IN_USE, "greenpool_pool_in_use", "Connections borrowed right now, all live workers"),
    (S.POOL_AVAILABLE, "greenpool_pool_idle", "Idle connections ready to lend, all live workers"),
    (S.REQUESTS_WAITING, "greenpool_pool_waiting", "Checkouts queued for a connection, all live workers"),
    (S.POOL_MAX, "greenpool_pool_max", "Configured max_size summed over live workers (the fleet's capacity)"),
)
_COUNTERS = (
    (S.REQUESTS_TIMEOUTS, "greenpool_pool_timeouts", "Checkouts that gave up with PoolTimeout"),
    (S.REQUESTS_REJECTED, "greenpool_pool_rejected", "Checkouts refused at once with TooManyRequests (max_waiting)"),
    (S.REQUESTS_CANCELLED, "greenpool_pool_waits_cancelled", "Queued checkouts cancelled from outside"),
    (S.CONNECTIONS_NUM, "greenpool_pool_connections_created", "Connections opened"),
    (S.CONNECTIONS_ERRORS, "greenpool_pool_connect_errors", "Failed attempts to open a connection"),
    (S.LEAKS_REPORTED, "greenpool_pool_leaks_reported", "Borrows held past leak_threshold (logged with their stack)"),
    (S.EXCLUSIVE_CHECKOUTS, "greenpool_pool_exclusive_checkouts",
     "Connections borrowed for one caller alone (without multiplexing: every checkout)"),
    # Multiplexing (POOL_MULTIPLEX); all stay 0 with POOL_MULTIPLEX=0
    (S.MUX_CONNECTIONS_NUM, "greenpool_pool_mux_connections_created",
     "Shared connections opened (each also counts in greenpool_pool_connections_created)"),
    (S.MUX_COMMANDS, "greenpool_pool_mux_commands", "Commands sent on shared connections"),
    (S.MUX_BATCHES, "greenpool_pool_mux_batches",
     "Writes on shared connections; mux_commands / mux_batches is the mean batch size"),
    (S.MUX_REPLIES_DROPPED, "greenpool_pool_mux_replies_dropped",
     "Replies read and dropped on shared connections: their callers gave up after the write (504, kill)"),
    (S.MUX_CANCELLED_UNSENT, "greenpool_pool_mux_cancelled_unsent",
     "Commands whose callers gave up before the write: never sent"),
)


class _Instruments:
    """The prometheus_client objects of one process, and what it needs to turn pool stats into them."""

    def __init__(self, multiproc_dir):
        registry = None if multiproc_dir else CollectorRegistry()  # multiprocess: the files are the registry
        self.requests = Counter("greenpool_http_requests", "HTTP requests answered, by route template and status",
                                ("method", "route", "status"), registry=registry)
        self.latency = Histogram("greenpool_http_request_duration_seconds",
                                 "Time from routing to the response body being ready, by route template",
                                 ("method", "route"), buckets=HTTP_BUCKETS, registry=registry)
        self.gauges = [(key, Gauge(name, doc, multiprocess_mode="livesum", registry=registry))
                       for key, name, doc in _GAUGES]
        self.counters = [(key, Counter(name, doc, registry=registry)) for key, name, doc in _COUNTERS]
        closed = Counter("greenpool_pool_connections_closed",
                         "Connections the pool closed instead of reusing, by reason", ("reason",), registry=registry)
        self.counters += [(key, closed.labels(reason)) for reason, key in S.DISCARD_REASONS.items()]
        self.wait = Histogram("greenpool_pool_wait_seconds",
                              "Time a checkout waited for a connection (0 when one was free); sampled, see docs",
                              buckets=WAIT_BUCKETS, registry=registry)
        if multiproc_dir:
            self.scrape_registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.scrape_registry, path=multiproc_dir)
        else:
            self.scrape_registry = registry


class _ProcessMetrics:
    """One process's instruments, bound label children, last pool reading and sampler greenlet."""

    def __init__(self, multiproc_dir, pool_source):
        self.instruments = _Instruments(multiproc_dir)
        self.pool_source = pool_source
        self.bound = {}  # (method, route, status) -> (counter child, pending latencies of (method, route))
        self.latencies = {}  # (method, route) -> [sum of seconds, count per bucket (len(HTTP_BUCKETS) + 1)...]
        self.last_pool = None
        self.last = {}
        self.sampler = None

    def bind(self, key):
        method, route, _ = key
        pending = self.latencies.get((method, route))
        if pending is None:
            pending = self.latencies[method, route] = [0.0] * (len(HTTP_BUCKETS) + 2)
        pair = self.bound[key] = (counting(self.instruments.requests.labels(*key)), pending)
        return pair

    def fold_latencies(self):
        """Add the latencies counted since the last fold to the histogram's values (in place: one ``inc`` per
        non-empty bucket, not one ``observe`` per request) and zero the pending counts."""
        histogram = self.instruments.latency
        for labels, pending in self.latencies.items():
            if not any(pending):
                continue
            counts = pending[:]
            pending[:] = [0.0] * len(pending)  # no gevent switch since the copy: no request is lost
            sum_, buckets = histogram_values(histogram.labels(*labels))
            if counts[0]:
                sum_.inc(counts[0])
            for bucket, count in zip(buckets, counts[1:], strict=False):
                if count:
                    bucket.inc(count)

    def sample(self):
        """Fold the pending request latencies; read the pool's stats once: set the gauges, advance the counters
        by what changed since the last read.

        No gevent switch happens in here, so a scrape's reading and the sampler's never interleave.
        """
        self.fold_latencies()
        pool = self.pool_source()
        if pool is None:  # no pool in this process yet: nothing to read
            return
        stats = pool.get_stats()
        last = self.last if pool is self.last_pool else {}
        self.last_pool, self.last = pool, stats

        def delta(key):
            now, before = stats.get(key, 0), last.get(key, 0)
            return now if now < before else now - before  # smaller: pop_stats() reset the counters

        inst = self.instruments
        for key, gauge in inst.gauges:
            gauge.set(stats.get(key, 0))
        for key, counter in inst.counters:
            change = delta(key)
            if change:
                counter.inc(change)
        queued = delta(S.REQUESTS_QUEUED)
        observe_waits(inst.wait, max(0, delta(S.REQUESTS_NUM) - queued), queued, delta(S.REQUESTS_WAIT_MS) / 1000.0)

    def run_sampler(self, interval):
        while True:
            gevent.sleep(interval)
            try:
                self.sample()
            except Exception:
                log.exception("sampling the pool's stats failed")


def observe_waits(histogram, free, queued, waited, bounds=WAIT_BUCKETS):
    """Record ``free`` checkouts that did not wait and ``queued`` ones that waited ``waited`` seconds in all.

    The pool keeps only totals, so each queued checkout of one reading is placed at their mean wait: ``_sum`` and
    ``_count`` are exact, the buckets are as fine as one sampling interval. Done in O(1) on the histogram's value
    objects (``observe()`` once per checkout would cost thousands of file writes a second under load); the test
    suite checks that this matches ``observe()``. ``bounds`` are the histogram's buckets, without +Inf.
    """
    if not (free or queued or waited):
        return
    sum_, buckets = histogram_values(histogram)
    sum_.inc(waited)
    if free:
        buckets[bisect_left(bounds, 0.0)].inc(free)  # the first bucket whose bound is >= the amount (+Inf last)
    if queued:
        buckets[bisect_left(bounds, waited / queued)].inc(queued)


def counting(child):
    """A function that adds 1 to the counter ``child``, as ``child.inc()`` does but cheaper per request.

    In multiprocess mode ``inc()`` takes a lock and asks the kernel for the pid (to notice a fork) every time:
    2.3 us a request against 0.4 us for the write alone (on a 2-core VM). Neither can matter for a child this
    process made (the metrics are rebuilt in every forked worker, ``forks.generation``) and wrote with no gevent
    switch in between, so the value is written to this process's file at once, as ``inc()`` writes it. This reads the
    value object's private ``_value``, ``_file`` and ``_key``, here and nowhere else (checked by name in
    tests/test_metrics.py, like ``histogram_values``'s). Any other value class: ``inc``.
    """
    value = getattr(child, "_value", None)
    if not getattr(value, "_multiprocess", False):
        return child.inc
    key = value._key

    def add_one():
        value._value += 1
        value._timestamp = 0.0
        value._file.write_value(key, value._value, 0.0)

    return add_one


def histogram_values(histogram):
    """The value objects of an unlabelled histogram (or a label child): its sum and one per bucket, +Inf last.

    prometheus_client has no public way to add n observations to a bucket at once, so this reads two private
    attributes (``_sum``, ``_buckets``), here and nowhere else. setup.cfg caps prometheus_client at the versions
    tested, and tests/test_metrics.py checks these attributes by name, so an upgrade that moves them fails loudly.
    """
    return histogram._sum, histogram._buckets


class ServiceMetrics:
    """The service's metrics, built on first use in each process (a forked worker builds its own).

    ``pool_source()`` returns this process's pool or ``None`` (it must not create one); ``multiproc_dir`` is
    ``PROMETHEUS_MULTIPROC_DIR`` or empty for single-process metrics (the app outside gunicorn).
    """

    def __init__(self, multiproc_dir, pool_source, interval=1.0):
        self.multiproc_dir = multiproc_dir
        self.pool_source = pool_source
        self.interval = interval
        self._state = None
        self._generation = None

    def _get(self):
        state = self._state
        if state is not None and self._generation == forks.generation:
            return state
        if self.multiproc_dir and values.ValueClass is values.MutexValue:  # the single-process value class
            raise RuntimeError("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: set it before "
                               "importing wsgi_app (gunicorn.conf.py does), or metrics would not be shared")
        self._state, self._generation = _ProcessMetrics(self.multiproc_dir, self.pool_source), forks.generation
        return self._state

    def observe(self, method, route, status, seconds):
        """Count one answered request (per-request path: a dict lookup, one counter increment, and the latency
        counted in a plain list, folded into the histogram by the next reading; with ``interval`` 0 there is no
        sampler, so the latency goes straight into the histogram)."""
        if method not in METHODS:
            method = "other"
        state = self._state
        if state is None or self._generation != forks.generation:
            state = self._get()
        key = (method, route, status)
        pair = state.bound.get(key)
        if pair is None:
            pair = state.bind(key)
        pair[0]()
        if self.interval <= 0:  # no sampler folds pending latencies: another worker's scrape would miss them
            state.instruments.latency.labels(method, route).observe(seconds)
            return
        pending = pair[1]
        pending[0] += seconds
        pending[bisect_left(HTTP_BUCKETS, seconds) + 1] += 1  # the first bucket whose bound is >= seconds

    def sample(self):
        """Take one reading of this process's pool stats now."""
        self._get().sample()

    def start_sampler(self):
        """Start this worker's sampling greenlet (once; not at all when the interval is 0)."""
        state = self._get()
        if self.interval > 0 and state.sampler is None:
            state.sampler = gevent.spawn(state.run_sampler, self.interval)

    def render(self, accept=None):
        """``(content_type, body)``: the scrape of all workers, in the format the ``Accept`` header asks for."""
        state = self._get()
        state.sample()
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(state.instruments.scrape_registry)


def prepare_dir(path):
    """Create ``path`` if needed and remove the metric files (``*.db``) a previous run left there; returns how many.

    Stale files would keep dead processes' live gauges in the sums: the directory must be emptied at every start.
    """
    os.makedirs(path, exist_ok=True)
    removed = 0
    for name in glob.glob(os.path.join(glob.escape(path), "*.db")):
        os.remove(name)
        removed += 1
    return removed


def mark_process_dead(pid, path):
    """In the master, after worker ``pid`` exited (even by SIGKILL): drop its live gauges from the sums."""
    multiprocess.mark_process_dead(pid, path)
