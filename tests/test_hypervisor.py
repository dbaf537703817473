"""The hypervisor layer on libvirt's test driver (no daemon): facts, events, lost libvirtd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest
import trio

from agent.hypervisor.connection import Hypervisor, HypervisorError
from agent.hypervisor.events import DomainEvent, DomainEventKind, start_event_loop
from protocol.messages.host import CheckHealthAnswer, CheckHealthCommand, PingRoutingCommand
from tests.agent_env import agent_config, agent_dir, guid_of, running_agent, running_ms

GUID = guid_of("agent1")
DOMAIN_XML = """<domain type='test'><name>{name}</name><memory>65536</memory>
<os><type>hvm</type></os></domain>"""


def _test_conn() -> Any:
    start_event_loop()  # before opening, so that this connection shares the event loop
    return libvirt.open("test:///default")


async def test_facts_and_lifecycle_events_reach_trio() -> None:
    hv = Hypervisor("test:///default")
    events: list[DomainEvent] = []
    hv.lifecycle_listeners.append(events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        assert hv.connected  # started = the first attempt is over, and it succeeded
        facts = await hv.host_facts()
        assert facts.cpus > 0 and facts.memory > 0 and facts.caps == "hvm,snapshot"
        assert "test" in await hv.running_domains()
        conn = await trio.to_thread.run_sync(_test_conn)
        dom = await trio.to_thread.run_sync(conn.createXML, DOMAIN_XML.format(name="ev1"), 0)
        with trio.fail_after(5):
            while DomainEvent("ev1", DomainEventKind.STARTED) not in events:
                await trio.sleep(0.02)
        await trio.to_thread.run_sync(dom.destroy)
        with trio.fail_after(5):
            while DomainEvent("ev1", DomainEventKind.STOPPED) not in events:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_unreachable_libvirtd_fails_fast_and_keeps_retrying() -> None:
    hv = Hypervisor("qemu+tcp://127.0.0.1:1/system", max_backoff=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        assert not hv.connected
        assert not await hv.healthy()
        try:
            await hv.call(lambda c: c.getInfo())
        except HypervisorError as exc:
            assert "libvirtd is not reachable" in str(exc)
        else:
            raise AssertionError("a call without libvirtd must fail")
        nursery.cancel_scope.cancel()


async def test_a_vm_starting_sends_an_out_of_band_ping(tmp_path: Path) -> None:
    # Pings every 60 s: the one that reports the VM within the wait below is the event's.
    async with running_ms(tmp_path, ping_interval=60) as ms:
        config = agent_config(tmp_path, f"127.0.0.1:{ms.port}", agent_dir(tmp_path, ms.ca))
        async with running_agent(config):
            await ms.wait_for_host(GUID, timeout=10)
            conn = await trio.to_thread.run_sync(_test_conn)
            dom = await trio.to_thread.run_sync(conn.createXML, DOMAIN_XML.format(name="oob1"), 0)
            await ms.wait_for_request(
                lambda _g, r: (
                    isinstance(r.commands[0], PingRoutingCommand)
                    and r.commands[0].out_of_band
                    and "oob1" in (r.commands[0].host_vm_state_report or {})
                ),
                timeout=5,
            )
            await trio.to_thread.run_sync(dom.destroy)


async def test_agent_stays_with_the_ms_while_libvirtd_is_away(tmp_path: Path) -> None:
    async with running_ms(tmp_path, ping_interval=1) as ms:
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            agent_dir(tmp_path, ms.ca),
            **{"hypervisor.uri": "qemu+tcp://127.0.0.1:1/system"},
        )
        async with running_agent(config):
            record = await ms.wait_for_host(GUID, timeout=10)
            assert record.status == "Up"
            (answer,) = await ms.send_command(GUID, [CheckHealthCommand()])
            assert isinstance(answer, CheckHealthAnswer)
            assert not answer.result
            assert answer.details is not None and "libvirt" in answer.details
            await trio.sleep(2.5)  # pings keep the session alive
            assert ms.connected() == [GUID]


async def test_a_lost_connection_is_closed_before_the_next_one_opens() -> None:
    hv = Hypervisor("test:///default", max_backoff=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        assert hv.connected
        old = hv._conn
        # libvirt's event thread reports the connection closed (EOF), as when libvirtd dies.
        await trio.to_thread.run_sync(
            hv._closed_cb, old, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, hv._generation
        )
        with trio.fail_after(5):
            while not (hv.reconnects == 1 and hv.connected):
                await trio.sleep(0.02)
        assert hv._conn is not old
        assert old._o is None  # closed (libvirt-python drops the pointer), not leaked
        assert "test" in await hv.running_domains()
        nursery.cancel_scope.cancel()


async def test_a_failing_event_registration_is_retried_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault injection on one real call: libvirt refuses the lifecycle subscription (as when
    # libvirtd goes away between the open and the registration).
    failures = []

    def refuse(self: Any, *args: Any) -> int:
        failures.append(self)
        raise libvirt.libvirtError("injected: cannot register domain events")

    monkeypatch.setattr(libvirt.virConnect, "domainEventRegisterAny", refuse)
    hv = Hypervisor("test:///default", max_backoff=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        with trio.fail_after(5):
            while len(failures) < 2:
                await trio.sleep(0.02)
        assert not hv.connected
        assert "domain events" in (hv.last_error or "")
        assert all(conn._o is None for conn in failures)  # each refused one was closed
        monkeypatch.undo()
        with trio.fail_after(5):
            while not hv.connected:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_a_lane_with_its_own_connection_opens_one_per_call_and_closes_it() -> None:
    """A long call (a migration) must not share the connection the short calls use."""
    hv = Hypervisor("test:///default")
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        shared = await hv.call(lambda c: c)
        lane = hv.lane(1, own_connection=True)
        seen: list[Any] = []

        def use(conn: Any) -> str:
            seen.append(conn)
            return str(conn.getHostname())

        assert await lane.call(use) == await hv.call(lambda c: c.getHostname())
        assert await lane.call(use)
        assert seen[0] is not shared and seen[1] is not seen[0]
        for conn in seen:  # closed after its call
            with pytest.raises(libvirt.libvirtError):
                conn.getHostname()
        with pytest.raises(HypervisorError, match="Domain not found"):
            await lane.call(lambda c: c.lookupByName("no-such-domain"))
        assert await hv.call(lambda c: c.isAlive())  # the shared one is untouched
        shared_lane = hv.lane(1)
        assert await shared_lane.call(lambda c: c) is shared
        nursery.cancel_scope.cancel()
