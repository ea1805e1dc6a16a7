"""REQUEST_TIMEOUT through ``wsgi_app.deadlines``: one hub timer per worker instead of a ``gevent.Timeout`` per
request. A request is answered 504 after REQUEST_TIMEOUT and before REQUEST_TIMEOUT + the tick (plus the hub's
delay), never on the wrong request, and a timed-out request's reply never reaches the next one."""
import time

import gevent
import pytest

from pool import forks
from pool.testing import wsgi_call
from pool.testing.http import Conn, http_request
from wsgi_app.deadlines import MAX_TICK, DeadlineExceeded, Deadlines
from wsgi_app.service import create_app

SLACK = 0.35  # the hub's delay on a loaded 2-core machine


def _guarded(deadlines, seconds):
    """Sleep ``seconds`` under a deadline of ``deadlines``: ('ok' | 'timeout', elapsed, exception's entry is ours)."""
    started = time.perf_counter()
    entry = deadlines.enter(started)
    try:
        try:
            gevent.sleep(seconds)
        finally:
            deadlines.leave(entry)
        return "ok", time.perf_counter() - started, None
    except DeadlineExceeded as exc:
        return "timeout", time.perf_counter() - started, exc.entry is entry


@pytest.mark.timing
def test_only_overdue_requests_are_interrupted_within_the_tick():
    """Of requests under one deadline, those that outlive it are interrupted within REQUEST_TIMEOUT + tick,
    each with its own entry; the others finish; nothing stays registered and the timer stops when idle."""
    deadlines = Deadlines(0.4)
    assert deadlines.tick == pytest.approx(0.04)
    jobs = [gevent.spawn(_guarded, deadlines, seconds) for seconds in (0.05, 0.3, 0.9, 2.0, 0.1, 5.0)]
    gevent.joinall(jobs, timeout=5, raise_error=True)
    outcomes = [job.value for job in jobs]
    assert [kind for kind, _, _ in outcomes] == ["ok", "ok", "timeout", "timeout", "ok", "timeout"]
    for kind, elapsed, own in outcomes:
        if kind == "timeout":
            assert own is True
            assert 0.4 <= elapsed < 0.4 + deadlines.tick + SLACK
    assert len(deadlines) == 0
    gevent.sleep(deadlines.tick * 3)
    assert not deadlines._timer.active


def test_tick_is_a_tenth_of_the_timeout_at_most_max_tick_and_zero_is_refused():
    assert Deadlines(30).tick == MAX_TICK
    assert Deadlines(0.5).tick == pytest.approx(0.05)
    for seconds in (0, -1, None):
        with pytest.raises((ValueError, TypeError)):
            Deadlines(seconds)


@pytest.mark.timing
def test_no_false_fire_on_one_greenlet_after_many_fast_requests():
    """One greenlet (one keep-alive connection) serving fast requests back to back for 4x the deadline: none
    is interrupted (each request has a deadline of its own, not what earlier requests left of one)."""
    deadlines = Deadlines(0.25)

    def serve_many():
        results = []
        stop = time.perf_counter() + 1.0
        while time.perf_counter() < stop:
            results.append(_guarded(deadlines, 0.01)[0])
        return results

    results = gevent.spawn(serve_many).get(timeout=5)
    assert len(results) > 40 and set(results) == {"ok"}


def test_a_fork_starts_afresh():
    """After a fork (the generation changes) the parent's requests are not ours and a new timer is made."""
    deadlines = Deadlines(5)
    entry = deadlines.enter()
    parent_timer = deadlines._timer
    forks.generation += 1
    try:
        assert len(deadlines) == 0
        child_entry = deadlines.enter()
        assert deadlines._timer is not parent_timer and len(deadlines) == 1
        deadlines.leave(entry)  # the parent's entry: nothing of ours
        assert len(deadlines) == 1
        deadlines.leave(child_entry)
        assert len(deadlines) == 0
    finally:
        forks.generation -= 1
        parent_timer.stop()
        deadlines._timer.stop()


@pytest.mark.timing
def test_request_timeout_zero_means_no_deadline(redis_url, redis_server, admin):
    """REQUEST_TIMEOUT=0: no deadline at all; a request that waits 1 s on a paused Redis gets its 200."""
    admin.hset("key", mapping={"slow": "fine"})
    app = create_app({"REDIS_URL": redis_url, "REQUEST_TIMEOUT": "0", "POOL_TIMEOUT": "5"})
    try:
        assert app.deadlines is None
        assert wsgi_call(app, "GET", "/")[0] == 200
        admin.client_pause(1000)
        started = time.perf_counter()
        assert wsgi_call(app, "GET", "/")[::2] == (200, {"slow": "fine"})
        assert time.perf_counter() - started >= 0.8
    finally:
        app.pool.close(1.0)
        admin.delete("key")


def _get(conn, path):
    status, _, body, _ = conn.roundtrip(http_request("GET", path))
    return status, body


@pytest.mark.timing
def test_keep_alive_connection_504_in_bound_and_the_next_request_gets_its_own_reply(gunicorn_factory, redis_url,
                                                                                     admin):
    """Under gunicorn, on one keep-alive connection: fast requests for 4x REQUEST_TIMEOUT all answer 200; with
    Redis paused a request answers 504 within REQUEST_TIMEOUT + tick (+ slack); the next request on the same
    connection, queued behind the cancelled command on the shared connection, gets its own hash."""
    admin.hset("greenpool:a", mapping={"v": "a"})
    admin.hset("greenpool:b", mapping={"v": "b"})
    timeout = 0.5
    service = gunicorn_factory(env={"REDIS_URL": redis_url, "REQUEST_TIMEOUT": timeout, "POOL_MULTIPLEX": 1})
    conn = Conn(service.port, timeout=10)
    try:
        served, stop = 0, time.perf_counter() + 4 * timeout
        while time.perf_counter() < stop:
            assert _get(conn, "/hashes/a") == (200, b'{"v":"a"}')
            served += 1
        assert served > 20
        admin.client_pause(800)  # the next 0.8 s of commands wait
        started = time.perf_counter()
        status, body = _get(conn, "/hashes/a")
        waited = time.perf_counter() - started
        assert status == 504 and b'"timeout"' in body
        assert timeout <= waited < timeout + min(MAX_TICK, timeout / 10) + SLACK
        assert _get(conn, "/hashes/b") == (200, b'{"v":"b"}')  # answered when Redis resumes, within its deadline
        assert _get(conn, "/hashes/a") == (200, b'{"v":"a"}')
    finally:
        conn.close()
