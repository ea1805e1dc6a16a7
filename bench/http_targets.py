"""The targets of issue 13, evaluated on the summary rows of ``bench.http_bench`` (one run, one venv).

For each worker class, the service (``svc:<class>``, the service's defaults) against the stock-pool app and the
hello ceiling of the same class, ``GET /`` (section ``main``):

* ``x hello``: req/s over hello's at 50 and 200 connections, at least ``HELLO_RATIO``;
* ``x stock``: req/s over the stock-pool app's at 50 and 200 connections, at least ``STOCK_RATIO``;
* ``cpu added``: the worker CPU per request the service adds over hello, as a share of what the stock-pool app
  adds, ``(cpu_svc - cpu_hello) / (cpu_stock - cpu_hello)``, at 50 and 200 connections, at most
  ``CPU_ADDED_RATIO`` (undefined, and so not met, when the stock app adds nothing);
* ``c=1000``: at 1000 connections, 0 errors and no reply over 1 s (wrk's histogram and the worst reply).

Each result is a dict (``name``, ``subject``, ``conns``, ``value``, ``goal``, ``met``, ``text``) for the JSON and
the table's footer. A missing measurement is reported as such and is not met.
"""

HELLO_RATIO = 0.8
STOCK_RATIO = 1.6
CPU_ADDED_RATIO = 0.3
RATIO_CONNS = (50, 200)
HIGH_CONNS = 1000


def _verdict(met):
    return "MET" if met else "NOT MET"


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def cpu_added_ratio(svc, stock, hello):
    """``(svc - hello) / (stock - hello)`` of the CPU per request, or None when undefined."""
    if None in (svc, stock, hello) or stock - hello <= 0:
        return None
    return (svc - hello) / (stock - hello)


def _result(name, subject, conns, value, goal, met, text, miss=None):
    """``miss``: by how much a ratio target is not met (None: met, or not a ratio)."""
    verdict = _verdict(met) + (f" by {miss:.2f}" if miss is not None and not met else "")
    return {"name": name, "subject": subject, "conns": conns, "value": value, "goal": goal, "met": met,
            "miss": None if met else miss, "text": f"{subject:<12} {conns:>4} conns: {text} ({goal}: {verdict})"}


def _ratio_targets(subject, conns, svc, stock, hello):
    out = []
    for name, base, goal_value in (("x hello", hello, HELLO_RATIO), ("x stock", stock, STOCK_RATIO)):
        value = svc["rps_median"] / base["rps_median"] if base and base["rps_median"] else None
        met = value is not None and value >= goal_value
        base_rps = _fmt(base["rps_median"] if base else None, ".0f")
        out.append(_result(name, subject, conns, value, f"target >= {goal_value}", met,
                           f"{name} {_fmt(value)} ({svc['rps_median']:.0f} / {base_rps} req/s)",
                           None if value is None else goal_value - value))
    cpus = [r["cpu_us_per_req"] if r else None for r in (svc, stock, hello)]
    value = cpu_added_ratio(*cpus)
    met = value is not None and value <= CPU_ADDED_RATIO
    svc_cpu, stock_cpu, hello_cpu = (_fmt(c, ".0f") for c in cpus)
    out.append(_result("cpu added", subject, conns, value, f"target <= {CPU_ADDED_RATIO}", met,
                       f"worker CPU added over hello {_fmt(value)} of the stock app's (svc {svc_cpu}, "
                       f"stock {stock_cpu}, hello {hello_cpu} us/req)",
                       None if value is None else value - CPU_ADDED_RATIO))
    return out


def evaluate(rows, classes):
    """The issue-13 targets for every class in ``classes``, from ``rows`` (``bench.http_bench.summarize``)."""
    idx = {(r["section"], r["target"], r["route"], r["conns"]): r for r in rows}
    out = []
    for c in classes:
        subject = f"svc:{c}"

        def row(kind, conns, c=c):
            return idx.get(("main", f"{kind}:{c}", "hgetall", conns))

        for conns in RATIO_CONNS:
            svc = row("svc", conns)
            if svc is None:
                continue
            out += _ratio_targets(subject, conns, svc, row("stock", conns), row("hello", conns))
        svc = row("svc", HIGH_CONNS)
        if svc is not None:
            met = svc["errors"] == 0 and svc["slower_than_1s"] == 0 and svc["max_ms"] <= 1000
            out.append(_result("c=1000", subject, HIGH_CONNS, svc["max_ms"], "target 0 errors, none > 1 s", met,
                               f"errors {svc['errors']}, > 1 s {svc['slower_than_1s']}, max {svc['max_ms']:.0f} ms"))
    return out


def routes_lines(rows):
    """One line per service route row: its req/s against the stock app's (no goal: a write slowed down shows)."""
    out = []
    for r in rows:
        if r["section"] == "routes" and r["target"].startswith("svc:"):
            out.append(f"  {r['target']:<12} {r['conns']:>4} conns: {r['route']:<6} x stock {_fmt(r['vs_stock'])} "
                       f"({r['rps_median']:.0f} req/s, errors {r['errors']}, "
                       f"cpu {_fmt(r['cpu_us_per_req'], '.0f')} us/req)")
    return out
