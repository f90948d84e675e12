"""Rate-limited logging: one line per event, until a flood makes that a flood of lines.

A window opens at the first event; its first ``burst`` events are logged one
line each, the rest are only counted, and when the window closes one summary
line says how many were not shown ("refused 950 more TLS handshakes in the
last 10 s").  The next event after that opens a new window.  Reusable for any
kind of refusal: the summary text is a parameter.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel


class RateLimitedLog:
    """At most ``burst`` lines per ``window`` seconds, then one summary line per window."""

    def __init__(
        self,
        log: Logger,
        summary: str,
        burst: int = 10,
        window: float = 10.0,
        clock: IReactorTime | None = None,
        level: LogLevel = LogLevel.warn,
    ):
        """``summary`` is a log format with the fields ``{count}`` and ``{window}`` (seconds)."""
        if burst < 1 or window <= 0:
            raise ValueError("burst must be at least 1 and window positive")
        if clock is None:
            from twisted.internet import reactor as clock
        self._log = log
        self._summary = summary
        self._burst = burst
        self._window = window
        self._clock = clock
        self._level = level
        self._opened: float | None = None  # when the current window opened
        self._shown = 0
        self._hidden = 0
        self._flush_call: IDelayedCall | None = None

    def emit(self, format: str, **fields) -> None:
        """Log one event (a twisted.logger format and its fields), or count it if over the limit."""
        now = self._clock.seconds()
        if self._opened is None or now >= self._opened + self._window:
            self._opened, self._shown = now, 0
        if self._shown < self._burst:
            self._shown += 1
            self._log.emit(self._level, format, **fields)
            return
        self._hidden += 1
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self._opened + self._window - now, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        count, self._hidden = self._hidden, 0
        self._log.emit(self._level, self._summary, count=count, window=f"{self._window:g}")

    def stop(self) -> None:
        """Log what is still counted now, and cancel the timer (on service stop)."""
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush()
