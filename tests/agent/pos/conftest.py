"""Fixtures for the POS tests that tests/conftest.py also gives: the Windows-like run (tests/ops/test_agent_windows.py)
loads only the conftest files under tests/agent, since tests/conftest.py serves hubs, which need POSIX-only modules."""

from tests.harness.small_disk import mounts, small_disk  # noqa: F401  (the full-disk and mount fixtures)
