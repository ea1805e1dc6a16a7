"""The greenpool WSGI service: ``gunicorn -c gunicorn.conf.py`` serves ``wsgi_app:app``.

gevent's monkey patching comes first, before anything imports socket, ssl or threading: that is all importing
this package does. ``app`` is built on first use (PEP 562 ``__getattr__``), once per process, from the
environment of that moment (``wsgi_app.service.get_app``): importing a submodule reads no setting.
"""
from gevent import monkey

monkey.patch_all()

__all__ = ["app"]


def __getattr__(name):
    if name == "app":
        from .service import get_app

        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
