"""The host's part of a real zone, on the wire: CheckNetwork, PingTest, CleanupNetworkRules,
ModifySshKeys, SetHostParams, the ping's VM report, CheckVirtualMachine, GetVncPort, and a
refused ReadyCommand; each answer judged as the 4.21 MS would (lab.ms_side.verdict_for).

A real agent against the lab MS over real TLS, on libvirt's test driver (no daemon); the
same commands on the two-host lab are in test_lab_zone_host.py.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import libvirt
import pytest
import trio

from agent.config import AgentConfig
from agent.daemon.app import Agent
from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from agent.hypervisor.events import start_event_loop
from agent.hypervisor.network import label_problem, missing_networks
from agent.hypervisor.vmstate import graphics_port
from lab.mgmt import ManagementServer
from lab.ms_side import HostEffect, verdict_for
from protocol import Response
from protocol.codec import encode_messages
from protocol.errors import UnexpectedResponse
from protocol.header import Flags, Header
from protocol.messages.host import PingRoutingCommand, PowerState, ReadyCommand
from protocol.messages.migration import MigrateAnswer, MigrateCommand
from protocol.messages.network import (
    CheckNetworkAnswer,
    CheckNetworkCommand,
    CleanupNetworkRulesCmd,
    ModifySshKeysCommand,
    PhysicalNetworkSetupInfo,
    PingTestCommand,
    SetHostParamsCommand,
)
from protocol.messages.vm import (
    CheckVirtualMachineAnswer,
    CheckVirtualMachineCommand,
    GetVncPortAnswer,
    GetVncPortCommand,
)
from protocol.model import Answer, Message, UnsupportedAnswer
from tests.agent_env import (
    agent_config,
    agent_dir,
    captured_logs,
    guid_of,
    raw_ms,
    running_agent,
    running_ms,
    shared_ca,
    write_agent_properties,
)

GUID = guid_of("agent1")
DOMAIN_XML = """<domain type='test'><name>{name}</name><memory>65536</memory>
<os><type>hvm</type></os><devices>{devices}</devices></domain>"""


@asynccontextmanager
async def agent_on_ms(base: Path, **keys: str) -> AsyncIterator[tuple[ManagementServer, Agent]]:
    async with running_ms(base, ping_interval=1) as ms:
        config = agent_config(base, f"127.0.0.1:{ms.port}", agent_dir(base, ms.ca), **keys)
        async with running_agent(config) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            yield ms, agent


async def ask(ms: ManagementServer, command: Message, timeout: float = 30) -> Message:
    (answer,) = await ms.send_command(GUID, [command], timeout=timeout)
    return answer


def _test_conn() -> Any:
    start_event_loop()
    return libvirt.open("test:///default")


# --- CheckNetworkCommand --------------------------------------------------------------


def _sysfs(root: Path, bridges: dict[str, list[str]], nics: list[str]) -> Path:
    """A sysfs tree as the kernel lays out bridges and interfaces (for the pure check)."""
    for bridge, ports in bridges.items():
        brif = root / "devices" / "virtual" / "net" / bridge / "brif"
        brif.mkdir(parents=True)
        for port in ports:
            (brif / port).mkdir()
        (root / "class" / "net" / bridge).mkdir(parents=True)
    for nic in nics:
        (root / "class" / "net" / nic).mkdir(parents=True)
    return root


def test_a_bridge_counts_only_with_a_physical_uplink(tmp_path: Path) -> None:
    sys_root = _sysfs(
        tmp_path,
        {
            "cloudbr0": ["vnet3", "eth0"],
            "brbond": ["bond0.100"],
            "brp": ["p2p1"],
            "brtaps": ["vnet0", "vnet1"],
            "brempty": [],
            "brveth": ["veth12"],
        },
        ["eno1", "ovsbr"],
    )
    assert label_problem("cloudbr0", sys_root) is None
    assert label_problem("brbond", sys_root) is None
    assert label_problem("brp", sys_root) is None
    assert label_problem("eno1", sys_root) is None  # not a bridge: an interface counts
    assert "ports: vnet0, vnet1" in (label_problem("brtaps", sys_root) or "")
    assert "ports: none" in (label_problem("brempty", sys_root) or "")
    assert "without a physical uplink" in (label_problem("brveth", sys_root) or "")
    assert "no bridge or interface" in (label_problem("cloudbr9", sys_root) or "")
    for bad in ("../../etc", "a/b", "x" * 16, "..", "with space"):
        assert label_problem(bad, sys_root) == "not a valid interface name"
    missing = missing_networks([None, "cloudbr9", "cloudbr0", "brtaps", "cloudbr9"], sys_root)
    assert [m.name for m in missing] == ["cloudbr9", "brtaps"]  # in order, each once


async def test_check_network_answers_what_is_missing_as_the_ms_reads_it(tmp_path: Path) -> None:
    # "lo" exists on every host (an interface, not a bridge); the others nowhere.
    present = PhysicalNetworkSetupInfo(guest_network_name="lo", private_network_name="lo")
    absent = PhysicalNetworkSetupInfo(
        physical_network_id=201,
        guest_network_name="lo",
        private_network_name="zhnomgmt0",
        public_network_name="zhnopub0",
        storage_network_name="zhnostor0",  # not checked, as the Java agent does not
    )
    async with agent_on_ms(tmp_path) as (ms, _agent):
        ok = await ask(ms, CheckNetworkCommand(network_info_list=[present]))
        assert isinstance(ok, CheckNetworkAnswer) and ok.result and not ok.reconnect
        assert verdict_for(CheckNetworkCommand(), ok).ok
        bad = await ask(ms, CheckNetworkCommand(network_info_list=[present, absent]))
    assert isinstance(bad, CheckNetworkAnswer) and not bad.result
    assert bad.details is not None and bad.details.startswith("Can not find network: ")
    assert "zhnomgmt0 (no bridge or interface" in bad.details and "zhnopub0" in bad.details
    assert "zhnostor0" not in bad.details
    verdict = verdict_for(CheckNetworkCommand(), bad)
    assert not verdict.ok and verdict.host_effect is HostEffect.ALERT
    assert "zhnomgmt0" in verdict.reason
    # What main answered before (Unsupported), a plain Answer, the class with Java's
    # default values (result false), no answer: each sends the connecting host to Alert.
    for wrong in (
        UnsupportedAnswer.for_command(CheckNetworkCommand.JAVA_CLASS),
        Answer(result=True),
        CheckNetworkAnswer(result=False),
        None,
    ):
        assert verdict_for(CheckNetworkCommand(), wrong).host_effect is HostEffect.ALERT


# --- PingTestCommand, CleanupNetworkRulesCmd ------------------------------------------


async def test_ping_test_pings_as_the_java_agent(tmp_path: Path) -> None:
    async with agent_on_ms(tmp_path) as (ms, _agent):
        up = await ask(ms, PingTestCommand(computing_host_ip="127.0.0.1"))
        # TEST-NET-2: never routed, nothing answers there.
        down = await ask(ms, PingTestCommand(computing_host_ip="198.51.100.77"))
        neither = await ask(ms, PingTestCommand())
        not_ip = await ask(ms, PingTestCommand(computing_host_ip="-f"))
        # A router that answers pings but runs no ssh on 3922: the VM cannot be asked.
        router = await ask(ms, PingTestCommand(router_ip="127.0.0.1", private_ip="198.51.100.7"))
        cleanup = await ask(ms, CleanupNetworkRulesCmd(interval=1800))
    assert type(up) is Answer and up.result
    assert verdict_for(PingTestCommand(), up).read == {"status": "Up"}
    assert type(down) is Answer and not down.result
    assert "Unable to ping computing host 198.51.100.77" in (down.details or "")
    assert verdict_for(PingTestCommand(), down).read == {"status": "Unknown"}
    assert isinstance(neither, Answer) and neither.details == "routerip and private ip is null"
    assert isinstance(not_ip, Answer) and not not_ip.result
    assert "is not an IP address" in (not_ip.details or "")
    assert isinstance(router, Answer) and not router.result
    assert "Unable to ping the vm 198.51.100.7 from the router 127.0.0.1" in (router.details or "")
    assert type(cleanup) is Answer and cleanup.result
    assert verdict_for(CleanupNetworkRulesCmd(), cleanup).ok


# --- ModifySshKeysCommand -------------------------------------------------------------

PUBLIC = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCzhtestpublickey cloud@ms\n"
PRIVATE = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAzhTESTPRIVATEKEYMATERIAL0123456789\n"
    "-----END RSA PRIVATE KEY-----\n"
)


async def test_ssh_keys_are_written_where_the_java_agent_writes_them(tmp_path: Path) -> None:
    keys = tmp_path / "root-ssh"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with captured_logs() as logbuf:
        async with agent_on_ms(tmp_path, **{"ssh.keys.dir": str(keys)}) as (ms, agent):
            answer = await ask(ms, ModifySshKeysCommand(pub_key=PUBLIC, prv_key=PRIVATE))
            assert type(answer) is Answer and answer.result, answer
            assert verdict_for(ModifySshKeysCommand(), answer).ok
            private, public = keys / "id_rsa.cloud", keys / "id_rsa.pub.cloud"
            assert private.read_text() == PRIVATE and public.read_text() == PUBLIC
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
            assert stat.S_IMODE(keys.stat().st_mode) == 0o700
            assert sorted(p.name for p in keys.iterdir()) == ["id_rsa.cloud", "id_rsa.pub.cloud"]
            # No private key: the one in place stays, and the answer says so.
            missing = await ask(ms, ModifySshKeysCommand(pub_key=PUBLIC))
            assert private.read_text() == PRIVATE
            # A key directory that cannot be made: false, saying where, and no key in it.
            agent.config = attrs.evolve(agent.config, ssh_keys_dir=blocked)
            failed = await ask(ms, ModifySshKeysCommand(pub_key=PUBLIC, prv_key=PRIVATE))
    assert isinstance(failed, Answer) and not failed.result
    assert str(blocked) in (failed.details or "")
    assert isinstance(missing, Answer) and not missing.result
    assert "no private key" in (missing.details or "")
    text = logbuf.getvalue() + (failed.details or "") + (missing.details or "")
    assert "AAAAB3NzaC1yc2E" not in text and "TESTPRIVATEKEYMATERIAL" not in text


# --- SetHostParamsCommand -------------------------------------------------------------


def _watching_migrations(seen: list[AgentConfig]) -> HandlerRegistry:
    """The built-in handlers, with MigrateCommand replaced by one that records the
    configuration a MigrateCommand is handed (the real handler gets the same)."""
    handlers = HandlerRegistry.with_builtins()

    async def record(cmd: MigrateCommand, ctx: CommandContext) -> Message:
        seen.append(ctx.config)
        return MigrateAnswer(result=False, details="recorded")

    handlers.register(MigrateCommand, record)
    return handlers


async def test_the_ms_migration_wait_wins_over_agent_properties_until_restart(
    tmp_path: Path,
) -> None:
    seen: list[AgentConfig] = []
    async with running_ms(tmp_path, ping_interval=1) as ms:
        props, certs = tmp_path / "agent.properties", agent_dir(tmp_path, ms.ca)
        write_agent_properties(props, tmp_path, ms.port, certs, **{"vm.migrate.wait": "50"})
        config = AgentConfig.load(props)
        async with running_agent(config, _watching_migrations(seen)) as agent:
            await ms.wait_for_host(GUID, timeout=10)
            await ask(ms, MigrateCommand(vm_name="v", dest_ip="10.0.0.2"))
            params = {
                "migratewait": "7",
                "router.aggregation.command.each.timeout": "3",
                "reconcile.commands.enabled": "false",
            }
            answer = await ask(ms, SetHostParamsCommand(params=params))
            assert type(answer) is Answer and answer.result
            assert verdict_for(SetHostParamsCommand(), answer).ok
            await ask(ms, MigrateCommand(vm_name="v", dest_ip="10.0.0.2"))
            # SIGHUP with a new vm.migrate.wait and new workers: the workers change, the
            # MS's migration wait stays, in one configuration.
            write_agent_properties(
                props, tmp_path, ms.port, certs, workers="2", **{"vm.migrate.wait": "60"}
            )
            with captured_logs() as logbuf:
                await agent.reload()
            await ask(ms, MigrateCommand(vm_name="v", dest_ip="10.0.0.2"))
            assert agent.migrations.config.migrate_wait == 7
            said = [json.loads(line) for line in logbuf.getvalue().splitlines()]
            assert {
                "key": "vm.migrate.wait",
                "file": 60,
                "in_force": 7,
            }.items() <= next(
                e for e in said if "overridden by the management" in e["event"]
            ).items()
            # A value that is no number is refused, and the one in force stays.
            refused = await ask(ms, SetHostParamsCommand(params={"migratewait": "soon"}))
            await ask(ms, MigrateCommand(vm_name="v", dest_ip="10.0.0.2"))
            # "0" means no limit, as for the Java agent.
            await ask(ms, SetHostParamsCommand(params={"migratewait": "0"}))
            await ask(ms, MigrateCommand(vm_name="v", dest_ip="10.0.0.2"))
    assert [(c.migrate_wait, c.workers) for c in seen] == [
        (50, 5),
        (7, 5),
        (7, 2),
        (7, 2),
        (-1, 2),
    ]
    assert isinstance(refused, Answer) and not refused.result
    assert "migratewait='soon' is not a whole number" in (refused.details or "")
    assert "vm.migrate.wait stays 7" in (refused.details or "")
    # The next start reads agent.properties alone: its value again.
    assert AgentConfig.load(props).migrate_wait == 60


# --- the VM report of every ping ------------------------------------------------------


async def test_the_ping_reports_live_domains_as_the_java_agent(tmp_path: Path) -> None:
    conn = await trio.to_thread.run_sync(_test_conn)
    hostname = await trio.to_thread.run_sync(conn.getHostname)
    made = []
    try:
        for name in ("zh-run", "zh-paused"):
            made.append(await trio.to_thread.run_sync(conn.createXML, _xml(name), 0))
        await trio.to_thread.run_sync(made[1].suspend)
        made.append(await trio.to_thread.run_sync(conn.defineXML, _xml("zh-off")))
        async with agent_on_ms(tmp_path) as (ms, _agent):
            _, request = await ms.wait_for_request(
                lambda g, r: (
                    isinstance(r.commands[0], PingRoutingCommand)
                    and "zh-paused" in (r.commands[0].host_vm_state_report or {})
                ),
                timeout=10,
            )
    finally:
        for dom in made:
            await trio.to_thread.run_sync(_remove, dom)
        await trio.to_thread.run_sync(conn.close)
    ping = request.commands[0]
    assert isinstance(ping, PingRoutingCommand)
    report = ping.host_vm_state_report or {}
    # Running and paused are PowerOn; a defined domain that does not run is not reported.
    assert {"zh-run", "zh-paused"} <= set(report) and "zh-off" not in report
    assert {e.state for e in report.values()} == {PowerState.POWER_ON}
    assert {e.host for e in report.values()} == {hostname}  # libvirt's host name


async def test_no_vm_report_while_libvirt_is_unreachable(tmp_path: Path) -> None:
    with captured_logs() as logbuf:
        # Nothing listens on port 1: libvirtd is unreachable from the start.
        unreachable = {"hypervisor.uri": "qemu+tcp://127.0.0.1:1/system"}
        async with agent_on_ms(tmp_path, **unreachable) as (ms, _agent):
            with trio.fail_after(10):
                while len(_pings(ms)) < 3:
                    await trio.sleep(0.1)
    pings = _pings(ms)
    assert len(pings) >= 3
    assert all(p.host_vm_state_report is None for p in pings)  # not {}, not an old report
    assert ms.vm_reports.get(GUID) is None
    warnings = [
        json.loads(line)
        for line in logbuf.getvalue().splitlines()
        if "pings carry no VM report" in line
    ]
    assert len(warnings) == 1  # once per outage, not once per ping


def _pings(ms: ManagementServer) -> list[PingRoutingCommand]:
    return [r.commands[0] for _, r in ms.received if isinstance(r.commands[0], PingRoutingCommand)]


# --- CheckVirtualMachineCommand, GetVncPortCommand ------------------------------------


def _xml(name: str, devices: str = "") -> str:
    return DOMAIN_XML.format(name=name, devices=devices)


def _remove(dom: Any) -> None:
    try:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError:
        pass


def test_the_vnc_port_is_read_from_the_live_xml_as_the_java_parser_does() -> None:
    def xml(graphics: str) -> str:
        return f"<domain><devices><graphics type='vnc' {graphics}/></devices></domain>"

    assert graphics_port(xml("port='5901' autoport='yes'")) == 5901
    assert graphics_port(xml("port='-1' autoport='yes'")) is None  # not allocated
    assert graphics_port(xml("autoport='yes'")) is None
    assert graphics_port(xml("port='x'")) is None
    assert graphics_port("<domain><devices/></domain>") is None
    assert graphics_port("not xml") is None


async def test_check_virtual_machine_and_vnc_port_as_the_ms_reads_them(tmp_path: Path) -> None:
    vnc = "<graphics type='vnc' port='5907' autoport='no' listen='127.0.0.1'/>"
    autoport = "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"
    conn = await trio.to_thread.run_sync(_test_conn)
    made = []
    try:
        made.append(await trio.to_thread.run_sync(conn.createXML, _xml("zh-vnc", vnc), 0))
        made.append(await trio.to_thread.run_sync(conn.defineXML, _xml("zh-down", autoport)))
        async with agent_on_ms(tmp_path) as (ms, agent):
            running = await ask(ms, CheckVirtualMachineCommand(vm_name="zh-vnc"))
            port = await ask(ms, GetVncPortCommand(id=12, name="zh-vnc"))
            await trio.to_thread.run_sync(made[0].suspend)
            paused = await ask(ms, CheckVirtualMachineCommand(vm_name="zh-vnc"))
            stopped = await ask(ms, CheckVirtualMachineCommand(vm_name="zh-down"))
            unknown = await ask(ms, CheckVirtualMachineCommand(vm_name="zh-nowhere"))
            no_port = await ask(ms, GetVncPortCommand(id=13, name="zh-down"))
            facts = agent.hypervisor.last_facts
    finally:
        for dom in made:
            await trio.to_thread.run_sync(_remove, dom)
        await trio.to_thread.run_sync(conn.close)
    check = CheckVirtualMachineCommand()
    assert running == CheckVirtualMachineAnswer(result=True, state=PowerState.POWER_ON, vnc_port=7)
    assert verdict_for(check, running).ok
    assert facts is not None and facts.private is not None
    assert port == GetVncPortAnswer(result=True, address=facts.private.ip, port=5907)
    assert verdict_for(GetVncPortCommand(), port).read == {
        "address": facts.private.ip,
        "port": 5907,
    }
    # Paused: the Java wrapper's PowerUnknown (the MS does not stop it).
    assert paused == CheckVirtualMachineAnswer(
        result=True, state=PowerState.POWER_UNKNOWN, vnc_port=7
    )
    assert verdict_for(check, paused).ok
    assert stopped == CheckVirtualMachineAnswer(result=True, state=PowerState.POWER_OFF)
    assert not verdict_for(check, stopped).ok  # the MS stops it: it does not run here
    assert isinstance(unknown, CheckVirtualMachineAnswer) and not unknown.result
    assert "zh-nowhere" in (unknown.details or "")
    assert not verdict_for(check, unknown).ok
    assert isinstance(no_port, GetVncPortAnswer) and not no_port.result
    assert not verdict_for(GetVncPortCommand(), no_port).ok
    # What main answered before, and a plain Answer: no console for the MS.
    for wrong in (UnsupportedAnswer.for_command(GetVncPortCommand.JAVA_CLASS), Answer(result=True)):
        assert not verdict_for(GetVncPortCommand(), wrong).ok
    assert not verdict_for(check, UnsupportedAnswer.for_command(check.JAVA_CLASS)).ok


# --- a refused ReadyCommand -----------------------------------------------------------


async def test_a_refusal_is_not_answered_and_registration_waits_for_the_backoff(
    tmp_path: Path,
) -> None:
    async with raw_ms(tmp_path) as (port, accept):
        certs = agent_dir(tmp_path, shared_ca(tmp_path))
        config = agent_config(tmp_path, f"127.0.0.1:{port}", certs, **{"backoff.seconds": "2"})
        with captured_logs() as logbuf:
            async with running_agent(config):
                link = await accept()
                await link.register(ping_interval=60)
                # As AgentManagerImpl.handleConnectedAgent writes it once a connect listener
                # threw: sequence -1, agent -1, not marked as from the server, no one waiting.
                body = encode_messages([ReadyCommand(details="java.lang.ClassCastException")])
                header = Header(
                    flags=Flags.REQUEST | Flags.STOP_ON_ERROR | Flags.IN_SEQUENCE,
                    sequence=-1,
                    length=len(body),
                    mgmt_id=-1,
                    agent_id=-1,
                    via=-1,
                )
                conn = link.stream.conn
                async with link.stream._write_lock:
                    await link.stream._write(conn.send_plaintext(header.encode() + body))
                refused_at = trio.current_time()
                answers = await _read_until_closed(link)
                closed_after = trio.current_time() - refused_at
                with trio.fail_after(15):
                    second = await accept()
                reconnect_after = trio.current_time() - refused_at
                await second.register(ping_interval=60)
    assert answers == []  # the Java agent answers nothing: no attache waits for it
    assert closed_after < 2.0  # at once, not after a queue or a time-out
    assert reconnect_after >= 1.9  # backoff.seconds=2
    assert "java.lang.ClassCastException" in logbuf.getvalue()


async def _read_until_closed(link: Any) -> list[object]:
    """Everything the agent answers until it closes the connection."""
    conn = link.stream.conn
    answers: list[object] = []
    with trio.fail_after(10):
        while True:
            while True:
                try:
                    event = conn.next_event()
                except UnexpectedResponse as exc:  # a response to the seq -1 request
                    answers.append(str(exc))
                    continue
                if event is None:
                    break
                if isinstance(event, Response):
                    answers.append(event)
            try:
                data = await link.stream._read()
            except Exception:
                return answers
            if not data:
                return answers
            conn.receive_data(data)


@pytest.mark.parametrize("details", ["", "host is disabled"])
def test_refusal_reasons(details: str) -> None:
    from agent.link.session import _refusal
    from protocol import Request

    header = Header(flags=Flags.REQUEST, sequence=-1, length=0, mgmt_id=-1, agent_id=-1, via=-1)
    assert _refusal(Request(header, [ReadyCommand(details=details)])) == (
        details or "no reason given"
    )
    assert _refusal(Request(header, [ReadyCommand(host_id=3)])) is None
