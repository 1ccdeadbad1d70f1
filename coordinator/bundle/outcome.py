"""Run outcomes and the exit codes the CLI maps them to."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    PASSED = "passed"
    THRESHOLDS_FAILED = "thresholds_failed"
    ABORTED = "aborted"  # an abort rule stopped the run early
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: the bundle is marked incomplete
    ERROR = "error"


EXIT_PASSED = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own code for bad usage
EXIT_INVALID_SCENARIO = 3
EXIT_THRESHOLDS_FAILED = 4
EXIT_ABORTED = 5
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT

EXIT_CODES = {
    Outcome.PASSED: EXIT_PASSED,
    Outcome.THRESHOLDS_FAILED: EXIT_THRESHOLDS_FAILED,
    Outcome.ABORTED: EXIT_ABORTED,
    Outcome.INTERRUPTED: EXIT_INTERRUPTED,
    Outcome.ERROR: EXIT_ERROR,
}

# `horde nightly`: what the night found (the most severe wins).
EXIT_REGRESSION = 6  # a statistically significant regression against earlier nights
EXIT_LEAK = 7  # a memory leak (target, coordinator or agents)
