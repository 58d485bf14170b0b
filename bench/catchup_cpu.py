"""CPU time of each process of a catch-up (hub main thread, hub writer thread, decode workers, agent).

On a shared 2-core machine the wall time of ``bench_catchup`` moves with other people's load; the CPU time
each process spends on the same backlog moves much less. This drains one backlog (built once and kept in
``--cache``) from a copy of the same files into a hub and an agent started from ``--code`` (a checkout:
compare two versions in alternating runs), sampling ``/proc`` every ``--sample-s``. No result file is written.
The writer is the hub's busiest thread besides the main one. ``--spy DIR`` records both processes with py-spy
(its samples include threads that wait, so read it for where, not how much); ``--timeline FILE`` writes each
thread's share of every 5 ms for 3 s from the middle of the drain (which process works while the other waits).

    git archive HEAD~1 | tar -x -C /tmp/old
    python -m bench.catchup_cpu --events 200000 --code /tmp/old --code . --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.bench_catchup import LOCATION, acked, agent_config, build_backlog
from bench.soak import free_port
from hub import open_store

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(stat_path: str) -> float:
    """utime + stime of a /proc/<pid>[/task/<tid>]/stat, in seconds (0 once it is gone)."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    try:
        return [
            int(c)
            for t in os.listdir(f"/proc/{pid}/task")
            for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()
        ]
    except OSError:
        return []


def threads(pid: int) -> dict[int, float]:
    try:
        return {int(t): cpu_s(f"/proc/{pid}/task/{t}/stat") for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return {}


async def ensure_backlog(cache: Path, events: int) -> Path:
    """A hub database with the agent's credential and an outbox of ``events`` events, built once."""
    where = cache / f"backlog-{events}"
    if (where / "done").exists():
        return where
    shutil.rmtree(where, ignore_errors=True)
    (where / "agent").mkdir(parents=True)
    async with open_store(str(where / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOCATION])
    await build_backlog(where / "agent" / "outbox.sqlite3", agent_id, events)
    (where / "credential").write_text(f"{agent_id}\n{token}\n")
    (where / "done").write_text("")
    return where


async def start(argv: list[str], code: Path, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(code)}
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, *argv, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_healthy(port: int, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.returncode is not None:
                raise SystemExit("the hub exited")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the hub did not start")


async def spy(pid: int, out: Path) -> asyncio.subprocess.Process:
    """py-spy (beside the interpreter) recording ``pid``'s stacks, every thread, as collapsed text."""
    py_spy = Path(sys.executable).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--threads", "--format", "raw", "--rate", "200", "-p", str(pid), "-o", str(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def schedstat(pid: int) -> dict[str, int]:
    """Run time (ns) of each thread of ``pid``, by "name:tid"."""
    out = {}
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
                out[f"{name}:{t}"] = int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
    return out


def trace_threads(pids: dict[str, int], out: Path, seconds: float = 3.0, step_s: float = 0.005) -> None:
    """Every ``step_s`` for ``seconds``: the share of the step each thread of ``pids`` ran, one line per step."""
    last = {p: schedstat(pid) for p, pid in pids.items()}
    t0 = time.perf_counter()
    prev = t0
    lines = []
    while time.perf_counter() - t0 < seconds:
        time.sleep(step_s)
        now = time.perf_counter()
        cells = []
        for p, pid in pids.items():
            cur = schedstat(pid)
            for k, v in cur.items():
                share = (v - last[p].get(k, v)) / 1e9 / (now - prev)
                if share > 0.05:
                    cells.append(f"{p}/{k}={share:.1f}")
            last[p] = cur
        lines.append(f"{(now - t0) * 1000:7.1f} " + " ".join(cells))
        prev = now
    out.write_text("\n".join(lines) + "\n")


async def one(
    backlog: Path, code: Path, events: int, sample_s: float, spy_dir: str | None = None, timeline: str | None = None
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(backlog, root, dirs_exist_ok=True)
        agent_id, token = (root / "credential").read_text().split()
        port = free_port()
        hub_db = root / "hub.db"
        hub = await start(["-m", "hub", "serve", "--db", str(hub_db), "--host", "127.0.0.1", "--port", str(port)],
                          code, root / "hub.log")  # fmt: skip
        try:
            await wait_healthy(port, hub)
            config = agent_config(root / "agent" / "agent.toml", agent_id, token, f"http://127.0.0.1:{port}")
            hub_before = threads(hub.pid)
            started = time.perf_counter()
            agent = await start(["-m", "agent", "run", "--config", str(config)], code, root / "agent.log")
            spies = (
                [
                    await spy(pid, Path(spy_dir) / f"{name}.txt")
                    for name, pid in (("hub", hub.pid), ("agent", agent.pid))
                ]
                if spy_dir
                else []
            )
            workers: dict[int, float] = {}
            hub_threads: dict[int, float] = {}
            agent_cpu = 0.0
            outbox = root / "agent" / "outbox.sqlite3"
            timeline_done = not timeline
            while acked(outbox) < events:
                if not timeline_done and acked(outbox) >= events // 2:
                    timeline_done = True
                    await asyncio.to_thread(trace_threads, {"hub": hub.pid, "agent": agent.pid}, Path(timeline))
                if agent.returncode is not None:
                    raise SystemExit(f"the agent exited; see {root / 'agent.log'}")
                hub_threads = threads(hub.pid) or hub_threads
                agent_cpu = cpu_s(f"/proc/{agent.pid}/stat") or agent_cpu
                for child in children(hub.pid):
                    workers[child] = cpu_s(f"/proc/{child}/stat") or workers.get(child, 0.0)
                await asyncio.sleep(sample_s)
            wall = time.perf_counter() - started
            hub_threads = threads(hub.pid) or hub_threads
            agent_cpu = cpu_s(f"/proc/{agent.pid}/stat") or agent_cpu
            for child in children(hub.pid):
                workers[child] = cpu_s(f"/proc/{child}/stat") or workers.get(child, 0.0)
            for proc in spies:
                proc.send_signal(signal.SIGINT)
                await asyncio.wait_for(proc.wait(), 60)
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 60)
        finally:
            hub.send_signal(signal.SIGTERM)
            await asyncio.wait_for(hub.wait(), 120)
        with contextlib.closing(sqlite3.connect(hub_db)) as conn:
            held = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        if held != events:
            raise SystemExit(f"the hub holds {held:,} events, not {events:,}")
    used = {t: s - hub_before.get(t, 0.0) for t, s in hub_threads.items()}
    main = used.pop(hub.pid, 0.0)
    others = sorted(used.values(), reverse=True)
    return {
        "wall_s": wall,
        "hub_main": main,
        "hub_t1": others[0] if others else 0.0,  # the busiest other thread: the writer
        "hub_t_rest": sum(others[1:]),
        "workers": sum(workers.values()),
        "agent": agent_cpu,
        "load1": os.getloadavg()[0],
    }


async def main_async(args: argparse.Namespace) -> None:
    backlog = await ensure_backlog(Path(args.cache), args.events)
    codes = [Path(c).resolve() for c in args.code]
    for round_ in range(args.rounds):
        for code in codes:
            r = await one(backlog, code, args.events, args.sample_s, args.spy, args.timeline)
            total = r["hub_main"] + r["hub_t1"] + r["hub_t_rest"] + r["workers"] + r["agent"]
            print(
                f"round {round_ + 1} {code.name}: wall {r['wall_s']:.1f} s | CPU-s hub main {r['hub_main']:.1f}, "
                f"writer {r['hub_t1']:.1f}, other threads {r['hub_t_rest']:.1f}, workers {r['workers']:.1f}, "
                f"agent {r['agent']:.1f}, total {total:.1f} | load {r['load1']:.1f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--code", action="append", required=True, help="a checkout to run hub and agent from")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "shelfsync-catchup-cpu"))
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--timeline", default=None, help="a file for 3 s of every thread's run share, 5 ms a line")
    parser.add_argument("--spy", default=None, help="a directory for py-spy's stacks of the hub and the agent")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
