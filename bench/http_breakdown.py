"""Where the service's CPU per request goes beyond hello's, from targets measured in one run (section
``breakdown`` of ``bench.http_bench``):

* ``hello``: the HTTP layer alone (gunicorn's worker, the same for every target);
* ``noredis``: the service with its hash read answered from memory (``bench/apps/breakdown.conf.py``): the
  service's own work per request (routing, the deadline, JSON, metrics);
* ``wait``: the same, after waiting once across an event-loop iteration: the floor of a request that waits for
  one reply, whatever the Redis client;
* ``svc``: the service, its Redis command in place.

Each step's cost is the difference of two targets' worker CPU per request (medians over the reps). ``budget`` is
the CPU per request the Redis command could cost for the service to reach ``HELLO_RATIO`` x hello's req/s,
assuming req/s goes as 1 / CPU per request (one saturated worker): ``hello / HELLO_RATIO - wait``.
"""
from bench.http_targets import HELLO_RATIO

STEPS = (("noredis", "the service's own work (no Redis)"), ("wait", "one wait across the event loop"),
         ("svc", "the Redis command in place"))


def _index(rows):
    return {(r["target"], r["conns"]): r for r in rows
            if (r["section"], r["route"]) in (("main", "hgetall"), ("breakdown", "hgetall"))}


def evaluate(rows, classes):
    """Per class and connection count where all four targets were measured: the CPU per request of each, the
    steps between them, their req/s over hello's and the budget left for the Redis command."""
    idx = _index(rows)
    out = []
    for worker_class in classes:
        for conns in sorted({r["conns"] for r in rows if r["section"] == "breakdown"}):
            got = {kind: idx.get((f"{kind}:{worker_class}", conns)) for kind in ("hello", "noredis", "wait", "svc")}
            if any(r is None or r["cpu_us_per_req"] is None or not r["rps_median"] for r in got.values()):
                continue
            cpu = {kind: r["cpu_us_per_req"] for kind, r in got.items()}
            hello_rps = got["hello"]["rps_median"]
            steps, previous = [], "hello"
            for kind, label in STEPS:
                steps.append({"target": kind, "label": label, "cpu_us": cpu[kind] - cpu[previous],
                              "x_hello": got[kind]["rps_median"] / hello_rps})
                previous = kind
            limit = cpu["hello"] / HELLO_RATIO
            out.append({"worker_class": worker_class, "conns": conns, "cpu_us": cpu, "steps": steps,
                        "budget_us": limit - cpu["wait"], "app_over_limit": cpu["noredis"] > limit})
    return out


def lines(results):
    """The footer lines of the breakdown (empty when it was not measured)."""
    out = []
    for r in results:
        head = f"  {r['worker_class']} {r['conns']:>4} conns: hello {r['cpu_us']['hello']:.0f} us/req"
        parts = [f"+ {s['label']} {s['cpu_us']:+.0f} (x hello {s['x_hello']:.2f})" for s in r["steps"]]
        redis = r["steps"][-1]["cpu_us"]
        out.append(f"{head}; " + "; ".join(parts))
        budget = r["budget_us"]
        if budget >= 0.5:
            room = f"the Redis command may cost {budget:.0f} us/req"
        else:
            spent = "the service's own work" if r["app_over_limit"] else "the wait"
            room = f"nothing is left for the Redis command: {spent} uses it up"
        out.append(f"    for {HELLO_RATIO}x hello's req/s {room}; it costs {redis:.0f}")
    return out
