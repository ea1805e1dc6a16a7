"""Which HTTP parser a gunicorn target uses: the service's ``http_parser`` setting and what gunicorn makes of it.

gunicorn 25+ has ``http_parser``: ``auto`` (its default) uses the ``gunicorn_h1c`` C parser when that is
importable and recent enough, else the pure Python parser; ``fast`` requires gunicorn_h1c; ``python`` forces
the Python one. The hello ceiling and the stock-pool app must parse HTTP as the service does, or their ratios
measure the parser. One source: ``gunicorn_baseline.conf.py`` takes the value the service's ``gunicorn.conf.py``
sets (``service_setting``), and gunicorn's default when it sets none, which is what the service gets too.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICE_CONF = os.path.join(ROOT, "gunicorn.conf.py")
_MARK = "GREENPOOL_SETTING "

# Run in a child: the service's config file monkey-patches and settles a metrics directory at import, which a
# baseline's master (or the benchmark) must not do. gunicorn ignores a config file's names that are no setting.
_READ = ("import json, runpy, sys\n"
         "ns = runpy.run_path(sys.argv[1])\n"
         f"print({_MARK!r} + json.dumps(ns.get(sys.argv[2])))\n")


def service_setting(name, conf=SERVICE_CONF, env=None):
    """The value ``conf`` (the service's gunicorn.conf.py) gives the gunicorn setting ``name`` in the environment
    ``env`` (default: this process's); None when it sets none. RuntimeError when the file does not load (an
    invalid service setting in that environment)."""
    done = subprocess.run([sys.executable, "-c", _READ, conf, name], capture_output=True, text=True,
                          cwd=os.path.dirname(conf), env=env, timeout=60)
    line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"could not read {name!r} from {conf} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-600:]}")
    return json.loads(line[len(_MARK):])


def parser_in_use(setting):
    """What a gunicorn worker parses HTTP with under ``http_parser = setting`` (None: gunicorn's default), e.g.
    ``"http_parser=auto (default) -> gunicorn_h1c 0.6.9"`` or ``"... -> python"``."""
    from gunicorn.config import Config

    cfg = Config()
    if "http_parser" not in cfg.settings:
        return "python (this gunicorn has no http_parser setting)"
    if setting is not None:
        cfg.set("http_parser", setting)
    label = f"http_parser={cfg.http_parser}" + (" (default)" if setting is None else "")
    try:
        from gunicorn.http.message import _check_fast_parser  # gunicorn's own choice, as its workers make it
        fast = _check_fast_parser(cfg)
    except ImportError:  # another gunicorn layout: say what can be known
        fast = None
    except RuntimeError as exc:  # 'fast' without a usable gunicorn_h1c: the worker would not start
        return f"{label} -> fails: {exc}"
    try:
        import gunicorn_h1c
        h1c = f"gunicorn_h1c {getattr(gunicorn_h1c, '__version__', '?')}"
    except ImportError:
        h1c = None
    if fast is None:
        return f"{label} -> unknown ({h1c or 'gunicorn_h1c not importable'})"
    return f"{label} -> {h1c if fast else 'python'}" + ("" if fast or not h1c else f" ({h1c} present, not used)")
