"""py-spy profile of one gunicorn worker under wrk load, and where its samples go (``bench.http_bench --profile``).

py-spy samples the worker's running Python stack (``--nonblocking``; idle time, the hub waiting in epoll, is not
sampled), twice while one wrk run keeps ``--profile-conns`` connections busy: collapsed stacks
(``--format raw``: one line per distinct stack, frames outermost first, then its sample count) and a flame graph.

Each sample goes to one category, by its frames read **innermost first**: the first frame in gunicorn
(``gunicorn``), in the service (``app``: ``wsgi_app``), or in the Redis client (``redis``: redis-py, hiredis
and greenpool's ``pool``) decides. So time in gevent's socket calls, the stdlib, json or prometheus_client goes
to whichever of those called it. A sample with none of them is ``hub`` when it has a gevent frame (the hub
greenlet, its loop callbacks, greenlet switches outside any request) and ``other`` otherwise.
"""
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORIES = ("gunicorn", "app", "redis", "hub", "other")
_NAMED = {"gunicorn": "gunicorn", "wsgi_app": "app", "redis": "redis", "hiredis": "redis", "pool": "redis"}
_HUB = ("gevent", "greenlet")
_FRAME = re.compile(r"(.*) \((.*?)(?::\d+)?\)$")
_STDLIB = re.compile(r".*/lib/python3\.\d+/")


def short_path(path):
    """A frame's file relative to site-packages, the repository or the stdlib: ``gunicorn/workers/ggevent.py``."""
    if "/site-packages/" in path:
        return path.rsplit("/site-packages/", 1)[1]
    if path.startswith(ROOT + "/"):
        return path[len(ROOT) + 1:]
    return _STDLIB.sub("", path)


def frame_name(frame):
    """``func (path:line)`` -> ``short/path.py:func``."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    func, path = m.groups()
    return f"{short_path(path)}:{func}"


def category(frames):
    """The category of one sample, from its frames (``short/path.py:func``, outermost first)."""
    for frame in reversed(frames):
        named = _NAMED.get(frame.split("/", 1)[0].split(":", 1)[0])
        if named:
            return named
    if any(frame.split("/", 1)[0] in _HUB for frame in frames):
        return "hub"
    return "other"


def parse_collapsed(lines):
    """``(frames, count)`` per line of py-spy's raw output, the process/thread pseudo-frames left out."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        yield [frame_name(f) for f in frames], int(count)


def summarize(lines, top=20):
    """Samples, shares per category, own and inclusive samples per frame, and the printable lines."""
    shares = dict.fromkeys(CATEGORIES, 0)
    own, total, samples, on_hub = {}, {}, 0, 0
    for frames, n in parse_collapsed(lines):
        samples += n
        shares[category(frames)] += n
        on_hub += n if any(f.startswith("gevent/hub.py:") for f in frames) else 0
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for fr in set(frames):
            total[fr] = total.get(fr, 0) + n

    def pct(n):
        return 100.0 * n / samples if samples else 0.0

    out = [f"py-spy: {samples} samples of the worker",
           "  shares (innermost gunicorn / app / redis frame decides; else hub if gevent, else other): "
           + ", ".join(f"{c} {pct(shares[c]):.1f}%" for c in CATEGORIES),
           f"  on the hub greenlet, whatever it runs (a frame in gevent/hub.py; its callbacks count above by what "
           f"they call): {pct(on_hub):.1f}%",
           "  own (self) samples:"]
    out += [f"    {pct(n):5.1f}%  {fr}" for fr, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    out.append("  total (inclusive) samples:")
    out += [f"    {pct(n):5.1f}%  {fr}" for fr, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": samples, "shares": {c: pct(n) for c, n in shares.items()}, "share_samples": shares,
            "on_hub": pct(on_hub),
            "own": own, "total": total, "lines": out}


def record(pid, url, seconds, conns, threads, out_stem):
    """py-spy on ``pid`` while wrk loads ``url``: the collapsed stacks and the flame graph under ``out_stem``;
    the summary (with ``raw`` and ``svg`` paths), or None with the reason printed."""
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(pyspy, os.X_OK):
        print("py-spy not found (pip install py-spy): no profile")
        return None
    raw, svg = out_stem + "-profile.txt", out_stem + "-profile.svg"
    load = subprocess.Popen(["wrk", f"-t{threads}", f"-c{conns}", f"-d{2 * seconds + 3}s", url + "/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        for fmt, path in (("raw", raw), ("flamegraph", svg)):
            subprocess.run([pyspy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                            "--format", fmt, "--output", path, "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 60)
    finally:
        load.wait(timeout=2 * seconds + 60)
    if not os.path.exists(raw):
        print("py-spy recorded nothing (does it have ptrace permission?)")
        return None
    with open(raw) as f:
        result = summarize(f)
    result["lines"].insert(1, f"  {conns} connections of GET /, {seconds} s; flame graph {svg}, collapsed stacks {raw}")
    return result | {"raw": raw, "svg": svg, "conns": conns, "seconds": seconds}
