"""Pieces both daemons share: ordered services, signals, JSON logs (start-up pieces: ``parkd/startup.py``)."""

from __future__ import annotations

import signal

from twisted.application import service
from twisted.internet import defer
from twisted.logger import globalLogPublisher, jsonFileLogObserver
from twisted.python.logfile import LogFile

from parkd.config import ConfigError
from parkd.events import FRAME_EVENTS, json_file_sink


class OrderedServices(service.MultiService):
    """Stops its children in reverse order, each after the previous one finished.

    (``MultiService`` stops them all at once: the JSON log would close while a
    leader is still handing over its leadership.)
    """

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        for child in reversed(list(self)):
            yield defer.maybeDeferred(child.stopService)


class JsonLogService(service.Service):
    """Copies every log event to a file as JSON (CONTRACT §8, ``--log-json``).

    The file is rotated once it passes ``max_bytes`` (``FILE.1`` … ``FILE.<keep>``,
    the oldest deleted) and reopened by :meth:`reopen` (SIGUSR1, for logrotate's
    ``postrotate``), so it stays bounded whatever the frame rate.
    """

    def __init__(self, path: str, max_bytes: int = 100 << 20, keep: int = 5):
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: LogFile | None = None
        self._observer = None

    def startService(self) -> None:
        try:
            # Line-buffered: events survive a kill -9 of the daemon (tests read them).
            self._file = LogFile.fromFullPath(self.path, rotateLength=self.max_bytes, maxRotatedFiles=self.keep)
        except OSError as e:
            raise ConfigError(f"--log-json: cannot open {self.path!r}: {e.strerror}") from None
        self._observer = jsonFileLogObserver(self._file)
        globalLogPublisher.addObserver(self._observer)
        FRAME_EVENTS.sink = json_file_sink(self._file)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            FRAME_EVENTS.sink = None
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


    def reopen(self) -> None:
        """Reopen the file by name (after logrotate moved it away)."""
        if self._file is not None:
            self._file.reopen()


class OnSignal(service.Service):
    """A signal calls ``callback`` on the reactor thread: SIGHUP reloads certificates
    (CONTRACT §9), SIGUSR1 reopens the JSON log (logrotate)."""

    def __init__(self, signum: int, callback, reactor):
        self.signum = signum
        self.callback = callback
        self.reactor = reactor
        self._previous = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self.signum, lambda *_: self.reactor.callFromThread(self.callback))

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None


def logging_services(top: service.MultiService, settings, reactor) -> None:
    """The JSON log of ``--log-json`` (bounded, reopened on SIGUSR1), first in ``top``."""
    if settings.log_json:
        log = settings.config.log
        json_log = JsonLogService(settings.log_json, int(log.max_mb * (1 << 20)), log.keep)
        json_log.setServiceParent(top)
        OnSignal(signal.SIGUSR1, json_log.reopen, reactor).setServiceParent(top)


