"""Fixtures of the adversarial suite: the fault suite's real hub and agent processes, each test bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import hub, make_store, proxy_to  # noqa: F401  (fixtures shared with the fault suite)

HERE = Path(__file__).resolve().parent
ADVERSARIAL_TIMEOUT_S = 240


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(ADVERSARIAL_TIMEOUT_S))
