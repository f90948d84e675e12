"""Hypothesis profiles of the hostile-input fuzzers (issue 7).

Two profiles, registered here and applied per test by ``fuzzkit.fuzz(n)`` (never
loaded globally, so other hypothesis tests keep their own settings):

- ``parkd-fuzz`` (default, part of ``make test``): each test's own example
  count, derandomized, so every run checks the same inputs (about 60 s for
  the whole of tests/fuzz on 2 cores);
- ``parkd-fuzz-soak``: fresh random inputs and ``PARKD_FUZZ_SCALE`` (default
  50) times as many examples.  Run it with

      HYPOTHESIS_PROFILE=soak .venv/bin/python -m pytest tests/fuzz -p no:cacheprovider

  A failure prints the falsifying example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example]

settings.register_profile(
    "parkd-fuzz",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_QUIET,
)
settings.register_profile(
    "parkd-fuzz-soak",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_QUIET,
)
