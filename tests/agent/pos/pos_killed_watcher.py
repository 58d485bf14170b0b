"""A drop folder's watcher in a process of its own, killed (SIGKILL) at a chosen step: ``python -m
tests.agent.pos.pos_killed_watcher TMP STEP``. The outbox and POS store are ``pos_helpers.open_env``'s in TMP, the
folder TMP/drop; STEP is a ``PosFolderWatcher`` method: the process kills itself when it is called (after it
returns, for ``_report_beside``: the export is filed by then)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agent.pos import PosFolderWatcher, PosImportConfig
from tests.agent.pos.pos_helpers import open_env


def main() -> None:
    tmp, step = Path(sys.argv[1]), sys.argv[2]
    real = getattr(PosFolderWatcher, step)

    async def killed(self: PosFolderWatcher, *args: Any) -> None:
        if step == "_report_beside":
            await real(self, *args)
        os.kill(os.getpid(), signal.SIGKILL)

    def killed_now(self: PosFolderWatcher, *args: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(PosFolderWatcher, step, killed if asyncio.iscoroutinefunction(real) else killed_now)

    async def run() -> None:
        config = PosImportConfig(profile="generic", unfinished_line_s=0.5)
        async with open_env(tmp, config) as env, PosFolderWatcher(env.importer, tmp / "drop", settle_s=0.1):
            await asyncio.sleep(60)

    asyncio.run(run())


if __name__ == "__main__":
    main()
