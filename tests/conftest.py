"""Test-suite options shared by every tier.

Slow groups (every app preset, the two-node Swarm, the fault-injection suite's long cases) are
marked ``@pytest.mark.slow`` and run only with ``--slow`` or ``BACKUP_TEST_SLOW=1``; CI turns
them on (.ci/run), the default ``scripts/test`` run stays short.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the slow groups (all presets, Swarm, long fault tests); same as BACKUP_TEST_SLOW=1",
    )


def slow_enabled(config) -> bool:
    return bool(config.getoption("--slow")) or os.environ.get("BACKUP_TEST_SLOW", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if slow_enabled(config):
        return
    skip = pytest.mark.skip(reason="slow group: run with --slow or BACKUP_TEST_SLOW=1 (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
