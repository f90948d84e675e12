"""Start-up pieces every parkd service uses: listening at once, the file limit, a bad config as one line.

Below the node, HTTP and camera layers (they import it); the daemons' JSON log
and service trees are the process layer's (``parkd/daemon.py``, ``parkd/tap.py``).
"""

from __future__ import annotations

import resource
import sys

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from parkd.config import ConfigError


def listen_now(reactor, description: str, factory, what: str):
    """Listen on ``description`` at once, or raise ConfigError naming ``what``.

    TCP endpoints listen synchronously, so a port in use is known before
    ``startService`` returns and can be reported as one clear line.
    """
    outcome = []
    serverFromString(reactor, description).listen(factory).addBoth(outcome.append)
    if not outcome:
        raise ConfigError(f"{what}: {description} did not start listening at once")
    if isinstance(outcome[0], Failure):
        error = outcome[0].value
        reason = getattr(error, "socketError", None) or error
        raise ConfigError(f"{what}: cannot listen on {description}: {reason}")
    return outcome[0]


def raise_file_limit() -> int:
    """Allow as many open files as the hard limit does (a node may serve thousands of cameras)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def fail(message: str) -> None:
    """Print one clear line and exit non-zero, without a traceback.

    The line goes to the real stderr (twistd redirects ``sys.stderr`` into its
    log once logging starts) and, as an error event, to the log.
    """
    Logger().error("parkd: {message}", message=message)
    stderr = sys.__stderr__ or sys.stderr
    if stderr is not sys.stderr:
        sys.stderr.flush()
    stderr.write(f"parkd: {message}\n")
    stderr.flush()
    raise SystemExit(1)


def fail_on_config_error(start):
    """Decorate ``startService`` so a ConfigError becomes one line and exit 1."""

    def startService(self):
        try:
            start(self)
        except ConfigError as e:
            fail(str(e))

    return startService
