"""Management-server lists and back-off as the MS or a file hands them over: bad entries and
bad numbers are skipped or bounded, never fatal, never a tight loop."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from agent.config import AgentConfig, ConfigError
from agent.daemon.mslist import MIN_RETRY, HostCycler
from agent.mshosts import LbAlgorithm, backoff_from_ms, host_entry_problem
from protocol.messages.host import SetupMSListAnswer, SetupMSListCommand, StartupRoutingCommand
from tests.agent_env import (
    ROOT,
    agent_config,
    agent_dir,
    captured_logs,
    guid_of,
    running_agent,
    running_ms,
)

GUID = guid_of("agent1")
# A 70-character non-ASCII label: getaddrinfo raises UnicodeError for it, not OSError.
BAD = "ä" * 70 + ".example"


def test_host_entries_are_checked_as_the_resolver_would() -> None:
    for good in (
        "10.0.0.1",
        "10.0.0.1:8250",
        "[fd00::1]:9000",
        "fd00::1",
        "ms-1.example.org",
        "localhost",
        "bücher.example",
    ):
        assert host_entry_problem(good) is None, good
    for bad in (
        BAD,
        "a" * 64 + ".example",
        "x" * 254,
        "ms_1 .example",
        "ms..example",
        "",
        "-ms.example",
        "ms/1",
        "10.0.0.1:0",
        "10.0.0.1:70000",
    ):
        assert host_entry_problem(bad) is not None, bad
    with pytest.raises(ConfigError, match="invalid value for 'host'"):
        AgentConfig.from_properties({"guid": "g", "host": f"10.0.0.1,{BAD}"})


async def test_a_bad_name_in_the_ready_list_is_skipped_not_fatal(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        good = f"127.0.0.1:{ms.port}"
        ms.ms_host_list = [BAD, good]  # the bad one first: it is tried first after a loss
        config = agent_config(tmp_path, good, agent_dir(tmp_path, ms.ca))
        with captured_logs() as logbuf:
            async with running_agent(config) as agent:
                await ms.wait_for_host(GUID, timeout=10)
                await ms.disconnect(GUID)
                with trio.fail_after(10):
                    while (
                        sum(
                            isinstance(r.commands[0], StartupRoutingCommand) for _, r in ms.received
                        )
                        < 2
                    ):
                        await trio.sleep(0.05)
                await ms.wait_for_host(GUID, timeout=10)
                assert agent.cycler.hosts == (good,)
        state = json.loads((tmp_path / "agent-state" / "agent-state.json").read_text())
        assert state["ms_hosts"] == [good]
        assert "ignoring an invalid management server address" in logbuf.getvalue()


async def test_a_bad_name_in_the_saved_list_is_skipped_at_start(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        good = f"127.0.0.1:{ms.port}"
        state_dir = tmp_path / "agent-state"
        state_dir.mkdir()
        (state_dir / "agent-state.json").write_text(
            json.dumps({"ms_hosts": [BAD, good], "lb_algorithm": "static"})
        )
        config = agent_config(tmp_path, "127.0.0.1:1", agent_dir(tmp_path, ms.ca))
        async with running_agent(config):
            await ms.wait_for_host(GUID, timeout=10)


async def test_a_list_with_no_valid_entry_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        good = f"127.0.0.1:{ms.port}"
        config = agent_config(tmp_path, good, agent_dir(tmp_path, ms.ca))
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            (answer,) = await ms.send_command(GUID, [SetupMSListCommand(ms_list=[BAD])])
            assert isinstance(answer, SetupMSListAnswer) and not answer.result
            assert "no valid host name or address" in (answer.details or "")
            assert agent.cycler.hosts == (good,)


# --- back-off ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "0.5", "-1", "nan", "inf", "3601", "1e12"])
def test_backoff_in_agent_properties_must_be_finite_and_1_to_3600(value: str) -> None:
    with pytest.raises(ConfigError, match=r"'backoff\.seconds'"):
        AgentConfig.from_properties({"guid": "g", "backoff.seconds": value})


def test_an_unusable_backoff_stops_the_agent_at_start_with_exit_78(tmp_path: Path) -> None:
    props = tmp_path / "agent.properties"
    props.write_text(f"guid=g\nhypervisor.uri=test:///default\nstate.dir={tmp_path / 's'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(props), "backoff.seconds=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78
    assert "backoff.seconds" in done.stderr and "Traceback" not in done.stderr


def test_backoff_from_the_ms_is_clamped_or_ignored() -> None:
    assert backoff_from_ms("7") == (7.0, None)
    for raw, expected in (("0", 1.0), ("-5", 1.0), ("1e12", 300.0), ("0.2", 1.0)):
        seconds, warning = backoff_from_ms(raw)
        assert seconds == expected and warning is not None and "outside" in warning
    for bad in ("nan", "inf", "-inf", "soon", None):
        seconds, warning = backoff_from_ms(bad)
        assert seconds is None and warning is not None and "ignoring" in warning


def test_no_host_is_tried_twice_within_a_second_but_the_next_one_at_once() -> None:
    only = HostCycler(("ms1",), LbAlgorithm.STATIC, backoff=1.0)
    assert only.next_attempt(0.0) == ("ms1", 0.0)
    only.reconnect("ms1")  # e.g. an MS that keeps asking for a reconnect
    host, wait = only.next_attempt(0.1)
    assert host == "ms1" and math.isclose(wait, MIN_RETRY - 0.1)
    only.moved()  # or keeps sending a new list
    host, wait = only.next_attempt(0.2)
    assert host == "ms1" and math.isclose(wait, MIN_RETRY - 0.2)
    two = HostCycler(("ms1", "ms2"), LbAlgorithm.STATIC, backoff=1.0)
    assert two.next_attempt(0.0) == ("ms1", 0.0)
    two.reconnect("ms1")
    assert two.next_attempt(0.0) == ("ms2", 0.0)  # another host: at once


@pytest.mark.parametrize("value", ["0", "-3", "nan"])
async def test_a_zero_or_bad_backoff_from_the_ms_is_no_tight_loop(
    tmp_path: Path, value: str
) -> None:
    async with running_ms(tmp_path, ping_interval=1, params={"backoff.seconds": value}) as ms:
        ms.refuse_ready = "refused to make the agent reconnect"
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        with captured_logs() as logbuf:
            async with running_agent(config) as agent:
                await trio.sleep(3.0)
                backoff = agent.cycler.backoff
        startups = sum(isinstance(r.commands[0], StartupRoutingCommand) for _, r in ms.received)
    assert backoff == 1.0
    assert 1 <= startups <= 4, startups  # once a second at most, not thousands
    assert "backoff.seconds" in logbuf.getvalue()


async def test_a_huge_backoff_from_the_ms_is_clamped(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1, params={"backoff.seconds": "1e12"}) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            assert agent.cycler.backoff == 300.0
