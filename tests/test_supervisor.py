"""The reconnect policy: a pure HostCycler, and the agent's loop on trio's autojump clock."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from agent.config import AgentConfig
from agent.daemon.app import Agent
from agent.daemon.mslist import HostCycler
from agent.link.transport import ConnectionLost, MessageStream
from agent.mshosts import LbAlgorithm, parse_host_list, split_host_port


def cycler(n: int = 3, algorithm: LbAlgorithm = LbAlgorithm.ROUND_ROBIN) -> HostCycler:
    return HostCycler(tuple(f"ms{i}" for i in range(1, n + 1)), algorithm, backoff=5.0)


def test_refused_hosts_are_tried_at_once_then_a_round_backs_off() -> None:
    c = cycler()
    tried = []
    now = 0.0
    for _ in range(6):
        host, wait = c.next_attempt(now)
        now += wait
        tried.append((host, now))
        c.attempt_failed(host, now)
    assert tried == [
        ("ms1", 0.0),
        ("ms2", 0.0),
        ("ms3", 0.0),
        ("ms1", 5.0),
        ("ms2", 5.0),
        ("ms3", 5.0),
    ]


def test_lost_session_moves_on_at_once_but_not_back_too_soon() -> None:
    c = cycler(2)
    assert c.next_attempt(0.0) == ("ms1", 0.0)
    c.connected("ms1")
    c.session_lost("ms1", 100.0)
    assert c.next_attempt(100.0) == ("ms2", 0.0)  # the next MS at once
    c.attempt_failed("ms2", 100.0)  # ms2 refuses
    host, wait = c.next_attempt(100.1)
    assert host == "ms1" and abs(wait - 4.9) < 1e-9  # ms1 only after backoff


def test_single_host_waits_backoff_after_a_lost_session() -> None:
    c = cycler(1)
    c.connected("ms1")
    c.session_lost("ms1", 10.0)
    assert c.next_attempt(10.0) == ("ms1", 5.0)
    assert c.next_attempt(16.0) == ("ms1", 0.0)


def test_shuffle_walks_every_host_each_round() -> None:
    c = HostCycler(("a", "b", "c", "d"), LbAlgorithm.SHUFFLE, 1.0, rng=random.Random(7))
    seen = []
    now = 0.0
    for _ in range(8):
        host, wait = c.next_attempt(now)
        now += wait
        seen.append(host)
        c.attempt_failed(host, now)
    assert sorted(seen[:4]) == sorted(seen[4:]) == ["a", "b", "c", "d"]


def test_new_list_replaces_the_old() -> None:
    c = cycler(2)
    c.set_hosts(["x", "y"], LbAlgorithm.STATIC)
    assert c.preferred == "x" and c.next_attempt(0.0) == ("x", 0.0)


def test_host_list_parsing() -> None:
    assert parse_host_list("10.0.0.1, 10.0.0.2@shuffle") == (
        ("10.0.0.1", "10.0.0.2"),
        LbAlgorithm.SHUFFLE,
    )
    assert parse_host_list("ms")[1] is LbAlgorithm.ROUND_ROBIN
    assert split_host_port("10.0.0.1", 8250) == ("10.0.0.1", 8250)
    assert split_host_port("10.0.0.1:9000", 8250) == ("10.0.0.1", 9000)
    assert split_host_port("[fd00::1]:9000", 8250) == ("fd00::1", 9000)
    assert split_host_port("fd00::1", 8250) == ("fd00::1", 8250)


async def test_agent_backs_off_between_rounds(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # Jump virtual time only once everything waited 50 ms of real time, so that the
    # agent's libvirt thread (test:///default) completes before time is moved on.
    mock_clock.autojump_threshold = 0.05
    attempts: list[tuple[str, float]] = []

    async def refuse(host: str) -> MessageStream:
        attempts.append((host, trio.current_time()))
        raise ConnectionLost(f"{host}: connection refused")

    config = AgentConfig.from_properties(
        {
            "guid": "g",
            "host": "ms1,ms2@static",
            "backoff.seconds": "5",
            "hypervisor.uri": "test:///default",
            "state.dir": str(tmp_path),
        }
    )
    agent = Agent(config, handle_signals=False, connector=refuse)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        with trio.fail_after(60):  # virtual seconds
            while len(attempts) < 6:
                await trio.sleep(0.5)
        agent.request_stop()
    start = attempts[0][1]
    assert [(h, round(t - start, 3)) for h, t in attempts[:6]] == [
        ("ms1", 0.0),
        ("ms2", 0.0),
        ("ms1", 5.0),
        ("ms2", 5.0),
        ("ms1", 10.0),
        ("ms2", 10.0),
    ]
