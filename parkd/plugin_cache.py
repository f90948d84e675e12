"""Regenerate Twisted's plugin cache so `twistd --help` lists parkd at once.

Run after installing (`python -m parkd.plugin_cache`); a stale or missing
dropin.cache is otherwise rebuilt lazily, and silently skipped if unwritable.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins


def main() -> None:
    names = sorted(p.tapname for p in getPlugins(IServiceMaker))
    if "parkd" not in names:
        raise SystemExit("parkd plugin not found; is twisted/plugins/parkd_plugin.py installed?")


if __name__ == "__main__":
    main()
