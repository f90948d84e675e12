"""Rate-limited logging: every event a line, until a flood; then one summary per window."""

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from parkd.ratelimit import RateLimitedLog


def make(burst=3, window=10.0):
    lines, clock = [], Clock()
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    summary = "refused {count} more TLS handshakes in the last {window} s"
    return RateLimitedLog(log, summary, burst, window, clock), lines, clock


def test_a_few_events_are_each_one_line():
    limited, lines, clock = make()
    for i in range(3):
        limited.emit("refused {who}", who=i)
    clock.advance(60)
    assert lines == ["refused 0", "refused 1", "refused 2"]
    assert not clock.getDelayedCalls()


def test_a_flood_is_summed_up_at_the_end_of_the_window():
    limited, lines, clock = make()
    for i in range(1000):
        limited.emit("refused {who}", who=i)
        clock.advance(0.005)  # 1000 in 5 s
    assert lines == ["refused 0", "refused 1", "refused 2"]
    clock.advance(4.99)
    assert len(lines) == 3
    clock.advance(0.02)
    assert lines[3:] == ["refused 997 more TLS handshakes in the last 10 s"]


def test_a_new_window_after_the_summary_shows_lines_again():
    limited, lines, clock = make(burst=1, window=10)
    for i in range(5):
        limited.emit("refused {who}", who=i)
    clock.advance(10)
    limited.emit("refused {who}", who="late")
    limited.emit("refused {who}", who="later")
    clock.advance(10)
    assert lines == ["refused 0", "refused 4 more TLS handshakes in the last 10 s", "refused late",
                     "refused 1 more TLS handshakes in the last 10 s"]  # fmt: skip


def test_stop_says_what_is_still_counted_and_leaves_no_timer():
    limited, lines, clock = make(burst=1)
    limited.emit("a")
    limited.emit("b")
    limited.stop()
    assert lines == ["a", "refused 1 more TLS handshakes in the last 10 s"]
    assert not clock.getDelayedCalls()


def test_limits_are_checked():
    with pytest.raises(ValueError):
        RateLimitedLog(Logger(), "x", burst=0, clock=Clock())
    with pytest.raises(ValueError):
        RateLimitedLog(Logger(), "x", window=0, clock=Clock())
