"""Baseline WSGI apps for ``bench.http_bench``: each is served by its own gunicorn worker next to the service."""
