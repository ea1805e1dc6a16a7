"""Start-up errors read like messages: ``gunicorn -c gunicorn.conf.py`` with an invalid setting prints one line
naming the variable and the rule (no traceback, no password) and exits with status 1, leaving nothing behind.
"""
import subprocess
import sys

import pytest
from conftest import REPO, SERVICE_CONF

from pool.server import free_port
from pool.testing import minimal_env

SECRET = "hunter2-s3cret"
CASES = [
    ({"POOL_MAX_SIZE": "x"}, "POOL_MAX_SIZE must be an integer, got 'x'"),
    ({"REDIS_URL": f"redis://:{SECRET}@h:notaport/0"}, "REDIS_URL is invalid: port must be an integer"),
    ({"REDIS_URL": f"redis://:{SECRET}@h/0?bogus=1"}, "REDIS_URL is invalid: unknown option 'bogus'"),
    ({"REDIS_URL": f"redis://:p@ss-{SECRET}@h:7777/0"}, "REDIS_URL is invalid: an '@' in 'redis://:***@h:7777/0'"),
    ({"REDIS_URL": f"redis://:{SECRET}@h:7777/0", "KEEPALIVE": "40"}, "KEEPALIVE must be <= 29, got 40"),
    ({"POOL_CLOSE_TIMEOUT": "28.5"}, "POOL_CLOSE_TIMEOUT (28.5) + KEEPALIVE (2) must be below GRACEFUL_TIMEOUT (30)"),
    ({"MAX_HASH_FIELDS": "10"}, "MAX_HASH_FIELDS must be >= MAX_FIELDS (1000), got 10"),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be >= 1, got 0"),
    ({"REQUEST_TIMEOUT": "nan"}, "REQUEST_TIMEOUT must be a finite number, got 'nan'"),
]


@pytest.mark.parametrize("env, message", CASES, ids=[next(iter(env)) + f"-{i}" for i, (env, _) in enumerate(CASES)])
def test_an_invalid_setting_is_one_line_and_exit_status_1(tmp_path, env, message):
    """stderr is exactly ``greenpool: invalid setting: <the rule>``; stdout is empty; the exit status is 1; the
    password appears nowhere; the master's private metrics directory is removed."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(SERVICE_CONF), "-b", f"127.0.0.1:{free_port()}"],
        cwd=REPO, env=minimal_env({"TMPDIR": tmp, **env}), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("greenpool: invalid setting: "), out.stderr
    assert message in lines[0]
    assert SECRET not in out.stderr
    assert list(tmp.iterdir()) == []  # the private PROMETHEUS_MULTIPROC_DIR made at import is gone
