"""Run pytest under gevent's monkey patching: the patch must come before pytest imports socket or threading.

Started by ``python -m bench.conformance`` as ``python run_pytest.py <pytest args>`` from the redis-py sdist
directory; this file's directory is then ``sys.path[0]``, so ``-p pool_plugin`` finds the plugin beside it.
"""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import pytest  # noqa: E402

if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:]))
