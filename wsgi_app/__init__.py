"""The greenpool WSGI service: ``gunicorn -c gunicorn.conf.py`` serves ``wsgi_app:app``.

gevent's monkey patching comes first, before anything imports socket, ssl or threading.
"""
from gevent import monkey

monkey.patch_all()

from .service import app  # noqa: E402

__all__ = ["app"]
