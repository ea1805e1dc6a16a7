"""The HTTP benchmark's own logic: the issue-13 target evaluation, the breakdown, the profile's categories, the
routes plan, the stock-pool app's write routes against the service's and the breakdown targets' answers against
the service's (the benchmark's fairness rests on them)."""
import pytest

from bench import http_bench, http_breakdown, http_profile, http_routes, http_targets
from pool.testing import Gunicorn, wsgi_call
from wsgi_app.service import create_app


def _row(kind, conns, rps, cpu, errors=0, slow=0, max_ms=50.0, section="main", route="hgetall"):
    return {"section": section, "target": f"{kind}:gevent", "route": route, "conns": conns, "rps_median": rps,
            "cpu_us_per_req": cpu, "errors": errors, "slower_than_1s": slow, "max_ms": max_ms}


def _by(results, name, conns):
    return next(r for r in results if r["name"] == name and r["conns"] == conns)


def test_targets_met_and_not_met_with_their_figures():
    rows = [_row("hello", 50, 10000, 100), _row("stock", 50, 5000, 220), _row("svc", 50, 8100, 130),
            _row("hello", 200, 10000, 100), _row("stock", 200, 5000, 200), _row("svc", 200, 7900, 140),
            _row("svc", 1000, 6000, 150, slow=1, max_ms=1200)]
    results = http_targets.evaluate(rows, ["gevent"])
    assert _by(results, "x hello", 50)["met"] and _by(results, "x hello", 50)["value"] == pytest.approx(0.81)
    assert _by(results, "x stock", 50)["met"] and _by(results, "x stock", 50)["value"] == pytest.approx(1.62)
    assert _by(results, "cpu added", 50)["value"] == pytest.approx(30 / 120) and _by(results, "cpu added", 50)["met"]
    assert not _by(results, "x hello", 200)["met"] and _by(results, "x hello", 200)["miss"] == pytest.approx(0.01)
    assert "(target >= 0.8: NOT MET by 0.01)" in _by(results, "x hello", 200)["text"]
    assert _by(results, "cpu added", 200)["value"] == pytest.approx(0.4) and not _by(results, "cpu added", 200)["met"]
    high = _by(results, "c=1000", 1000)
    assert not high["met"] and "> 1 s 1" in high["text"] and "NOT MET" in high["text"]
    assert "(svc 130, stock 220, hello 100 us/req)" in _by(results, "cpu added", 50)["text"]


def test_targets_without_a_baseline_are_not_met():
    results = http_targets.evaluate([_row("svc", 50, 8000, 130), _row("svc", 1000, 6000, 150)], ["gevent"])
    assert [r["met"] for r in results] == [False, False, False, True]
    assert http_targets.cpu_added_ratio(130, 100, 100) is None  # the stock app adds nothing: undefined


def test_breakdown_steps_and_budget():
    rows = [_row("hello", 50, 12000, 80), _row("noredis", 50, 11000, 90, section="breakdown"),
            _row("wait", 50, 10500, 95, section="breakdown"), _row("svc", 50, 9000, 110),
            _row("hello", 200, 12000, 80), _row("noredis", 200, 11000, 90, section="breakdown")]  # no wait at 200
    (result,) = http_breakdown.evaluate(rows, ["gevent"])
    assert result["conns"] == 50
    assert [(s["target"], s["cpu_us"]) for s in result["steps"]] == [("noredis", 10), ("wait", 5), ("svc", 15)]
    assert [s["x_hello"] for s in result["steps"]] == pytest.approx([11 / 12, 10.5 / 12, 0.75])
    assert result["budget_us"] == pytest.approx(80 / 0.8 - 95)  # the Redis command may cost 5 us for 0.8x
    text = "\n".join(http_breakdown.lines([result]))
    assert "+ the Redis command in place +15 (x hello 0.75)" in text and "may cost 5 us/req; it costs 15" in text
    footer = http_bench.verdict_lines(rows, http_bench.parse_args(["--sections", "main,breakdown"]), [])
    assert "where the CPU per request goes" in "\n".join(footer) and text.splitlines()[0] in footer
    rows[2] = _row("wait", 50, 9800, 100.2, section="breakdown")  # the wait alone takes it below 0.8x
    assert "nothing is left for the Redis command: the wait uses it up" in "\n".join(
        http_breakdown.lines(http_breakdown.evaluate(rows, ["gevent"])))
    rows[1] = _row("noredis", 50, 9700, 101, section="breakdown")  # and the service's work alone
    assert "the service's own work uses it up" in "\n".join(
        http_breakdown.lines(http_breakdown.evaluate(rows, ["gevent"])))


def test_breakdown_plan_brings_its_baselines_without_main():
    alone = http_bench.plan(http_bench.parse_args(["--sections", "breakdown", "--conns", "50,1000"]))
    assert alone == [("breakdown", f"{kind}:gevent", "hgetall", 50) for kind in ("svc", "hello", "noredis", "wait")]
    with_main = http_bench.plan(http_bench.parse_args(["--sections", "main,breakdown", "--conns", "200"]))
    assert [j for j in with_main if j[0] == "breakdown"] == [
        ("breakdown", f"{kind}:gevent", "hgetall", 200) for kind in ("noredis", "wait")]


@pytest.mark.parametrize("mode", ["noredis", "wait"])
def test_breakdown_targets_answer_as_the_service(tmp_path, redis_url, admin, mode):
    """The breakdown compares the same answer: the service's own bytes, from Redis's first reply, then from memory
    (a missing key stays missing); the service's hooks still run (the worker closes its pool on the way out)."""
    admin.hset("key", mapping={"f": "v1", "g": "\u00e9"})
    env = {"REDIS_URL": redis_url, "BREAKDOWN": mode}
    target = Gunicorn(http_bench.BREAKDOWN_CONF, tmp_path, env, cwd=http_bench.ROOT, ready_path="/").start()
    try:
        first = target.request("GET", "/")
        missing = target.request("GET", "/hashes/later")
        admin.hset("key", "f", "changed")  # from memory now: Redis is not asked again
        admin.hset("greenpool:later", "f", "v")
        again = target.request("GET", "/")
        still_missing = target.request("GET", "/hashes/later")
    finally:
        target.stop()
    assert (missing.status, still_missing.status) == (404, 404)
    assert "closed its Redis pool" in target.log()
    service = create_app({"REDIS_URL": redis_url})
    try:
        admin.hset("key", "f", "v1")
        expected = wsgi_call(service, "GET", "/")
    finally:
        service.pool.close(1.0)
    assert (first.status, again.status, expected[0]) == (200, 200, 200)
    assert first.body == again.body and first.json() == expected[2] == {"f": "v1", "g": "\u00e9"}


def test_breakdown_refuses_an_unknown_mode(tmp_path, redis_url):
    target = Gunicorn(http_bench.BREAKDOWN_CONF, tmp_path, {"REDIS_URL": redis_url, "BREAKDOWN": "fast"},
                      cwd=http_bench.ROOT, ready_path="/")
    with pytest.raises(RuntimeError, match="BREAKDOWN must be one of noredis, wait"):
        target.start()


# py-spy raw lines: frames outermost first, then the count.
SITE = "/venv/lib/python3.11/site-packages"
CANNED = [
    f"thread (0x1);run (gevent/greenlet.py:1);handle ({SITE}/gunicorn/workers/ggevent.py:2);"
    f"recv (/usr/lib/python3.11/socket.py:3);recv ({SITE}/gevent/_socketcommon.py:4) 40",
    f"handle ({SITE}/gunicorn/workers/ggevent.py:2);__call__ ({http_profile.ROOT}/wsgi_app/service.py:5);"
    f"observe ({SITE}/prometheus_client/metrics.py:6) 20",
    f"__call__ ({http_profile.ROOT}/wsgi_app/service.py:5);get_hash ({http_profile.ROOT}/wsgi_app/store.py:7);"
    f"execute ({http_profile.ROOT}/pool/multiplex.py:8);send ({SITE}/gevent/_socket3.py:9) 25",
    f"run ({SITE}/gevent/hub.py:10) 10",
    "<module> (/usr/lib/python3.11/json/encoder.py:11) 5",
]


def test_profile_shares_by_the_innermost_named_frame():
    summary = http_profile.summarize(CANNED)
    assert summary["samples"] == 100
    assert summary["shares"] == {"gunicorn": 40.0, "app": 20.0, "redis": 25.0, "hub": 10.0, "other": 5.0}
    assert summary["own"]["gevent/_socketcommon.py:recv"] == 40
    assert summary["total"]["gunicorn/workers/ggevent.py:handle"] == 60
    assert summary["on_hub"] == 10.0
    assert "gunicorn 40.0%, app 20.0%, redis 25.0%, hub 10.0%, other 5.0%" in summary["lines"][1]


def test_routes_plan_and_options():
    args = http_bench.parse_args(["--sections", "routes", "--routes", "put,delete", "--conns", "50,200,1000",
                                  "--routes-conns", "200"])
    assert http_bench.plan(args) == [("routes", f"{kind}:gevent", route, 200) for route in ("put", "delete")
                                     for kind in ("svc", "stock")]
    assert http_routes.wrk_script_args("delete", args)[::3] == ["delete", "204"]
    with pytest.raises(SystemExit):
        http_bench.parse_args(["--routes", "post"])


@pytest.fixture
def stock_app(redis_url, monkeypatch):
    from bench.apps import stock_pool_app

    monkeypatch.setattr(stock_pool_app, "REDIS_URL", redis_url)
    monkeypatch.setattr(stock_pool_app, "_client", None)
    yield stock_pool_app.app
    if stock_pool_app._client is not None:
        stock_pool_app._client.close()


def test_stock_app_write_routes_answer_as_the_service(stock_app, redis_url, admin):
    """The routes section compares the same work: the same statuses and bodies for the same requests."""
    service = create_app({"REDIS_URL": redis_url})
    steps = [("PUT", "/hashes/a", {"key": "a", "n": "1"}), ("PUT", "/hashes/a", {"key": "a", "n": "2"}),
             ("PATCH", "/hashes/a", {"n": "3"}), ("PATCH", "/hashes/b", {"n": "1"}), ("GET", "/hashes/a", None),
             ("DELETE", "/hashes/a", None), ("DELETE", "/hashes/a", None), ("GET", "/hashes/a", None),
             ("PUT", "/hashes/c", {"n": 1}), ("GET", "/", None)]
    try:
        answers = {}
        for name, app in (("service", service), ("stock", stock_app)):
            admin.flushdb()
            answers[name] = []
            for method, path, body in steps:
                status, _, payload = wsgi_call(app, method, path, body)
                answers[name].append((status, payload if status < 300 else None))
            answers[name].append(admin.hgetall("greenpool:b"))
    finally:
        service.pool.close(1.0)
    assert answers["stock"] == answers["service"]
    assert [a[0] for a in answers["service"][:-1]] == [201, 200, 200, 201, 200, 204, 404, 404, 400, 200]


@pytest.mark.parametrize(("line", "expected"), [('http_parser = "python"\n', "python"), ("keepalive = 2\n", None)])
def test_baselines_take_the_service_confs_http_parser(tmp_path, line, expected):
    from bench.apps.http_parser import service_setting

    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(line)
    assert service_setting("http_parser", str(conf)) == expected
