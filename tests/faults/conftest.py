"""Fixtures of the fault suite: a hub process, stores (agent processes), a fault proxy; all cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import TEST_TIMEOUT_S, Simulation, Store
from tests.faults.proxy import FaultPlan, ProxyThread
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each fault test is bounded: 240 s in the short run, 30 min in the long one (SHELFSYNC_LONG_FAULTS=1)."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A hub process on a free port (not started: add credentials first, then ``hub.start()``)."""
    process = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=free_port())
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> Iterator[Callable[..., ProxyThread]]:
    """``proxy_to(hub, plan=…, seed=…)``: a fault proxy in front of ``hub``, closed at the end."""
    made: list[ProxyThread] = []

    def make(target: HubProcess, plan: FaultPlan | None = None, **kwargs: object) -> ProxyThread:
        proxy = ProxyThread(target.port, plan=plan, **kwargs)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """``make_store(hub, url, name=…, location=…, simulation=…)``: a credential and a data dir; agents killed at the end."""
    made: list[Store] = []

    def make(
        target: HubProcess,
        hub_url: str,
        *,
        name: str = "store-1",
        location: str = "STORE-1",
        simulation: Simulation | None = None,
        **kwargs: object,
    ) -> Store:
        cred = add_credential(target.db, location)
        store = Store(name, location, cred, tmp_path / name, hub_url, simulation, **kwargs)  # type: ignore[arg-type]
        store.write_config()
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            store.kill_all()
