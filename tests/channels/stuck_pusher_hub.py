"""``python -m tests.channels.stuck_pusher_hub -m hub serve …``: the hub, whose channel pushes hang for ever once
the file named by ``SHELFSYNC_TEST_STUCK`` exists; with ``SHELFSYNC_TEST_STUCK_UNCANCELLABLE=1`` the hang swallows
its cancellation too, so whatever stops the pusher hangs with it (the channels' lead loop).

The hang stands for a bug: an await with no time limit in the pusher's loop (the channel's own requests have one,
``timeout_s``, so a channel that never answers cannot show it). The hub process is otherwise the real one: its
lead loops, lock connections and other jobs run as ever, which is what the tests look at.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
from pathlib import Path

from hub.channels.connector import Target
from hub.channels.levels import LevelKey
from hub.channels.pusher import ChannelPusher

_push_batch = ChannelPusher._push_batch


async def _stuck_push_batch(self: ChannelPusher, batch: dict[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
    if Path(os.environ["SHELFSYNC_TEST_STUCK"]).exists():
        while True:
            try:
                await asyncio.Event().wait()  # never set: hangs until the task is cancelled
            except asyncio.CancelledError:
                if os.environ.get("SHELFSYNC_TEST_STUCK_UNCANCELLABLE") != "1":
                    raise
    return await _push_batch(self, batch, turn_key)


ChannelPusher._push_batch = _stuck_push_batch  # type: ignore[method-assign]

if __name__ == "__main__":
    if sys.argv[1:3] != ["-m", "hub"]:
        raise SystemExit("usage: python -m tests.channels.stuck_pusher_hub -m hub serve [options]")
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    runpy.run_module("hub", run_name="__main__", alter_sys=True)
