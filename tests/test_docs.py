"""The README's tables against the code: every setting the code reads is in the settings table, every module of
the library, the service and the benchmarks is in the layout table. Both fail by name when one is missing."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# where settings are read: the service's settings, the gunicorn config, the metrics directory
SETTING_SOURCES = ["wsgi_app/settings.py", "gunicorn.conf.py", "wsgi_app/metrics_dir.py"]
SETTING_READ = re.compile(
    r"""env_(?:str|int|float)\(\s*["']([A-Z][A-Z0-9_]+)["']"""  # env_int("POOL_MAX_SIZE", ...)
    r"""|environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']"""  # os.environ.get("BIND") / environ["X"]
    r"""|["']([A-Z][A-Z0-9_]+)["']\s+(?:not\s+)?in\s+(?:os\.)?environ"""  # "PORT" not in os.environ
)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def section(title):
    """The README's text under the heading ``title`` up to the next heading of the same or a higher level."""
    readme = read("README.md")
    match = re.search(rf"^(#+) {re.escape(title)}\n", readme, re.M)
    assert match, f"README has no section {title!r}"
    level = len(match.group(1))
    rest = readme[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def first_column(table_text):
    return {line.split("|")[1] for line in table_text.splitlines() if line.startswith("| ")}


def settings_read_by_code():
    names = set()
    for path in SETTING_SOURCES:
        for groups in SETTING_READ.findall(read(path)):
            names.update(name for name in groups if name)
    return names


def test_the_scan_finds_settings():
    # a broken pattern would make the next test pass on nothing
    assert {"REDIS_URL", "POOL_MAX_SIZE", "PORT", "BIND", "METRICS_INTERVAL", "PROMETHEUS_MULTIPROC_DIR"} <= (
        settings_read_by_code())


@pytest.mark.parametrize("name", sorted(settings_read_by_code()))
def test_every_setting_is_in_the_settings_table(name):
    documented = " ".join(first_column(section("Settings")))
    assert f"`{name}`" in documented, f"{name} is read by the code but missing from the README's settings table"


def modules():
    found = []
    for top in ("pool", "wsgi_app", "bench"):
        for folder, _dirs, files in os.walk(os.path.join(ROOT, top)):
            rel = os.path.relpath(folder, ROOT)
            if "__pycache__" in rel or "results" in rel:
                continue
            found += [f"{rel}/{name}" for name in files if name.endswith(".py")]
    return sorted(found)


@pytest.mark.parametrize("module", modules())
def test_every_module_is_in_the_layout_table(module):
    rows = first_column(section("Layout"))
    paths = {path for row in rows for path in re.findall(r"`([^`]+)`", row)}
    folder = os.path.dirname(module) + "/"
    folder_row = folder.count("/") > 1 and folder in paths  # bench/apps/ covers its files; pool/ does not
    assert module in paths or folder_row, f"{module} is missing from the README's layout table"
