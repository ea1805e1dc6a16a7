"""How the service is loaded: importing ``wsgi_app`` patches and builds nothing; ``wsgi_app.app`` is built on first
use, once per process, by every way gunicorn loads it. Import order is real only in a fresh interpreter, so each
case runs in a subprocess (or a real gunicorn).
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pool.testing import wait_until

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra):
    """Only what a fresh interpreter needs, plus ``extra``: none of the developer's service settings leak in."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(**env), capture_output=True,
                          text=True, timeout=60, check=False)


def test_importing_reads_no_setting_and_using_app_does():
    """With an invalid POOL_MAX_SIZE in the environment, importing wsgi_app, wsgi_app.settings and
    wsgi_app.service succeeds (and patches); the first use of ``wsgi_app.app`` raises SettingsError naming the
    variable."""
    code = (
        "import wsgi_app, wsgi_app.settings, wsgi_app.service, wsgi_app.metrics, wsgi_app.store\n"
        "import gevent.monkey as m\n"
        "assert m.is_module_patched('socket'), 'not patched'\n"
        "try:\n"
        "    wsgi_app.app\n"
        "except wsgi_app.settings.SettingsError as error:\n"
        "    print('refused:', error)\n"
    )
    out = run_python(code, POOL_MAX_SIZE="ten", REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused: POOL_MAX_SIZE must be an integer, got 'ten'", out.stdout


def test_app_is_built_once_per_process_and_kept_across_fork():
    """``wsgi_app.app``, ``from wsgi_app import app`` and concurrent first uses from many greenlets all get one
    Service, built by one ``create_app()`` call; a forked child (what --preload does) keeps that object."""
    code = (
        "import os, gevent, wsgi_app, wsgi_app.service as service\n"
        "calls = []\n"
        "real = service.create_app\n"
        "service.create_app = lambda *a: calls.append(1) or real(*a)\n"
        "apps = [g.value for g in gevent.joinall([gevent.spawn(lambda: wsgi_app.app) for _ in range(20)])]\n"
        "from wsgi_app import app\n"
        "assert all(a is app for a in apps) and wsgi_app.app is app, 'several apps'\n"
        "assert calls == [1], calls\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if wsgi_app.app is app and calls == [1] else 1)\n"
        "assert os.waitpid(pid, 0)[1] == 0, 'the child rebuilt the app'\n"
        "print('ok')\n"
    )
    out = run_python(code, REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("args", [
    ["-k", "gevent", "wsgi_app:app"],
    ["-k", "gevent", "--preload", "wsgi_app:app"],
    ["-c", "gunicorn.conf.py"],
    ["-c", "gunicorn.conf.py", "--preload"],
], ids=["plain", "plain-preload", "conf", "conf-preload"])
def test_every_way_gunicorn_loads_the_app_serves_it(args, redis_url, admin, tmp_path):
    """``gunicorn wsgi_app:app`` (with and without --preload) and ``gunicorn -c gunicorn.conf.py`` (with and
    without --preload) all load the lazily built app: 2 workers answer GET / with the hash from Redis."""
    admin.hset("key", mapping={"loaded": "yes"})
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as sink:
        master = subprocess.Popen([sys.executable, "-m", "gunicorn", *args, "-b", "127.0.0.1:0", "-w", "2"],
                                  cwd=REPO, env=clean_env(REDIS_URL=redis_url), stdout=sink, stderr=sink)
    try:
        listening = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
        wait_until(lambda: listening.search(log.read_text()) or master.poll() is not None, 30)
        assert master.poll() is None, log.read_text()
        port = int(listening.search(log.read_text()).group(1))
        for _ in range(4):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/")
                reply = conn.getresponse()
                assert (reply.status, json.loads(reply.read())) == (200, {"loaded": "yes"}), log.read_text()
            finally:
                conn.close()
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(timeout=30)
        admin.delete("key")
    assert master.returncode == 0, log.read_text()
