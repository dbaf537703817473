"""The lab management server, driven by a fake agent over real TCP and TLS."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import math
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from attrs import define, field
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.link.transport import ConnectionLost, MessageStream, RequestTimeout
from lab.ca import LabCA
from lab.control import ControlServer, control_request
from lab.mgmt import HostNotConnected, ManagementServer, MigrationRefused
from protocol import Answer, Message, Request, Session
from protocol.codec import to_json
from protocol.messages.host import (
    CheckHealthAnswer,
    CheckHealthCommand,
    HostVmStateReportEntry,
    PingAnswer,
    PingRoutingCommand,
    PowerState,
    ReadyAnswer,
    ReadyCommand,
    ShutdownCommand,
    StartupAnswer,
    StartupRoutingCommand,
)
from protocol.messages.migration import (
    MigrateAnswer,
    MigrateCommand,
    PrepareForMigrationAnswer,
    PrepareForMigrationCommand,
)
from protocol.messages.vm import CheckVirtualMachineAnswer, CheckVirtualMachineCommand
from tests.ms_env import agent_tls_context

GUID = "0f6d4bd4-5b0b-4c7a-9d1e-6c1b9a7f0001-LibvirtComputingResource"
GUID2 = "0f6d4bd4-5b0b-4c7a-9d1e-6c1b9a7f0002-LibvirtComputingResource"

_ANSWERS: dict[type[Message], Callable[[], Message]] = {
    ReadyCommand: lambda: ReadyAnswer(result=True),
    CheckHealthCommand: lambda: CheckHealthAnswer(result=True),
    PrepareForMigrationCommand: lambda: PrepareForMigrationAnswer(
        result=True, new_vm_cpu_shares=250
    ),
    CheckVirtualMachineCommand: lambda: CheckVirtualMachineAnswer(
        result=True, state=PowerState.POWER_ON
    ),
    MigrateCommand: lambda: MigrateAnswer(result=True, details="migrated"),
}


@define(eq=False)
class FakeAgent:
    """An agent that answers the MS's commands at once and remembers them."""

    stream: MessageStream
    seen: list[Request] = field(factory=list)
    closed: trio.Event = field(factory=trio.Event)
    _changed: trio.Event = field(factory=trio.Event)

    @classmethod
    async def connect(
        cls, nursery: trio.Nursery, ms: ManagementServer, ctx: ssl.SSLContext
    ) -> FakeAgent:
        stream = await MessageStream.connect(
            "127.0.0.1", ms.port, ctx, Session.for_agent(), connect_timeout=5, handshake_timeout=5
        )
        agent = cls(stream)
        send, receive = trio.open_memory_channel[Request](math.inf)
        nursery.start_soon(agent._read, send)
        nursery.start_soon(agent._answer, receive)
        return agent

    async def _read(self, send: trio.MemorySendChannel[Request]) -> None:
        with contextlib.suppress(ConnectionLost):
            await self.stream.run(send.send_nowait)
        self.closed.set()

    async def _answer(self, receive: trio.MemoryReceiveChannel[Request]) -> None:
        async for request in receive:
            self.seen.append(request)
            self._changed.set()
            self._changed = trio.Event()
            answers = [_ANSWERS.get(type(c), Answer)() for c in request.commands]
            with contextlib.suppress(ConnectionLost):
                await self.stream.respond(request, answers)

    async def wait_for(self, kind: type[Message]) -> Request:
        with trio.fail_after(5):
            while True:
                for request in self.seen:
                    if isinstance(request.commands[0], kind):
                        return request
                await self._changed.wait()

    async def startup(
        self, guid: str = GUID, *, secured: bool = False, ip: str = "192.0.2.10"
    ) -> StartupAnswer:
        startup = StartupRoutingCommand(
            guid=guid,
            name=f"host-{guid[35]}",
            private_ip_address=ip,
            host_details={"secured": "true" if secured else "false", "Host.OS": "Debian"},
        )
        response = await self.stream.request([startup], timeout=5)
        (answer,) = response.answers
        assert isinstance(answer, StartupAnswer)
        assert int(response.header.flags) == 0x20  # FROM_SERVER, opposite of the request's
        return answer


@contextlib.asynccontextmanager
async def running(server: ManagementServer) -> AsyncIterator[ManagementServer]:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        server.close()


@pytest.fixture
async def ms(tmp_path: Path) -> AsyncIterator[ManagementServer]:
    server = ManagementServer.create(state_dir=tmp_path / "ms", ping_interval=7, mgmt_id=42)
    async with running(server):
        yield server


@pytest.fixture
def ctx(ms: ManagementServer, tmp_path: Path) -> ssl.SSLContext:
    return agent_tls_context(ms.ca, tmp_path, cert_from=ms.ca)


async def test_startup_answered_at_once_then_ready_with_the_real_id(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    agent = await FakeAgent.connect(nursery, ms, ctx)
    answer = await agent.startup()
    assert answer.result is True
    assert answer.host_id == 0
    assert answer.ping_interval == 7
    assert answer.host_name == "host-1"
    record = await ms.wait_for_host(GUID, timeout=5, secured=False)
    assert answer.host_uuid == record.uuid
    assert record.status == "Up"
    assert record.private_ip == "192.0.2.10"
    assert record.details["Host.OS"] == "Debian"
    request = await agent.wait_for(ReadyCommand)
    assert int(request.header.flags) == 0x27  # REQUEST|STOP_ON_ERROR|IN_SEQUENCE|FROM_SERVER
    assert request.header.agent_id == record.id
    assert request.header.mgmt_id == 42
    ready = request.commands[0]
    assert isinstance(ready, ReadyCommand)
    assert (ready.host_id, ready.host_uuid, ready.dc_id) == (record.id, record.uuid, 1)
    assert ready.details is None
    # notifyMonitorsOfConnection's ReadyCommand: the host's ids, ready.command.wait (60 s).
    assert (ready.wait, ready.enable_human_readable_sizes, ready.lb_algorithm) == (60, True, None)
    # handleConnectedAgent's second one: avoid list and LB check interval; an MS list and
    # algorithm only when the agent's differ from the MS's (this MS has none).
    with trio.fail_after(5):
        while (
            len(readies := [r for r in agent.seen if isinstance(r.commands[0], ReadyCommand)]) < 2
        ):
            await trio.sleep(0.01)
    second = readies[1].commands[0]
    assert isinstance(second, ReadyCommand)
    assert (second.host_id, second.avoid_ms_host_list, second.lb_check_interval) == (
        record.id,
        [],
        0,
    )
    assert second.ms_host_list is None and second.lb_algorithm is None
    assert ms.connected() == [GUID]
    assert ms.received[0][0] == GUID


async def test_ping_gets_a_ping_answer(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    agent = await FakeAgent.connect(nursery, ms, ctx)
    await agent.startup()
    record = await ms.wait_for_host(GUID, timeout=5)
    ping = PingRoutingCommand(
        host_id=record.id, host_vm_state_report={"vm-1": HostVmStateReportEntry(host=GUID)}
    )
    response = await agent.stream.request([ping], stop_on_error=True, timeout=5)
    assert int(response.header.flags) == 0x22
    (answer,) = response.answers
    assert isinstance(answer, PingAnswer)
    assert answer.command == to_json(ping)
    assert answer.send_startup is False
    assert ms.vm_reports[GUID]["vm-1"].state is PowerState.POWER_ON

    ms.request_startup_once = True
    flags = []
    for _ in range(2):
        response = await agent.stream.request([ping], stop_on_error=True, timeout=5)
        assert isinstance(response.answers[0], PingAnswer)
        flags.append(response.answers[0].send_startup)
    assert flags == [True, False]

    ms.silent = True
    with pytest.raises(RequestTimeout):
        await agent.stream.request([ping], stop_on_error=True, timeout=0.2)
    assert len(ms.received) == 5  # read and recorded, just not answered


async def test_first_message_other_than_startup_is_discarded(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    agent = await FakeAgent.connect(nursery, ms, ctx)
    with pytest.raises(RequestTimeout):
        await agent.stream.request([PingRoutingCommand()], timeout=0.3)
    assert ms.received == []
    assert not agent.closed.is_set()
    answer = await agent.startup()
    assert answer.result is True
    await ms.wait_for_host(GUID, timeout=5)


async def test_send_command_round_trip(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    agent = await FakeAgent.connect(nursery, ms, ctx)
    await agent.startup()
    record = await ms.wait_for_host(GUID, timeout=5)
    (answer,) = await ms.send_command(GUID, [CheckHealthCommand()], timeout=5)
    assert isinstance(answer, CheckHealthAnswer)
    assert answer.result is True
    request = await agent.wait_for(CheckHealthCommand)
    assert int(request.header.flags) == 0x23
    (answer,) = await ms.send_command(record.id, [CheckHealthCommand()], timeout=5)
    assert isinstance(answer, CheckHealthAnswer)
    with pytest.raises(HostNotConnected):
        await ms.send_command("no-such-host", [CheckHealthCommand()])


async def test_shutdown_and_disconnect_mark_the_host_disconnected(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    agent = await FakeAgent.connect(nursery, ms, ctx)
    await agent.startup()
    await ms.wait_for_host(GUID, timeout=5)
    # As the Java MS: no answer; disconnectWithoutInvestigation closes the link.
    await agent.stream.send([ShutdownCommand(reason="sig.kill")])
    with trio.fail_after(5):
        await agent.closed.wait()
    record = ms.db.get(GUID)
    assert record is not None and record.status == "Disconnected"

    agent = await FakeAgent.connect(nursery, ms, ctx)
    await agent.startup()
    await ms.wait_for_host(GUID, timeout=5)
    await ms.disconnect(GUID)
    with trio.fail_after(5):
        await agent.closed.wait()
    assert ms.connected() == []
    record = ms.db.get(GUID)
    assert record is not None and record.status == "Disconnected"


async def test_refused_ready_carries_the_reason(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    ms.refuse_ready = "host is in maintenance"
    agent = await FakeAgent.connect(nursery, ms, ctx)
    await agent.startup()
    request = await agent.wait_for(ReadyCommand)
    assert isinstance(request.commands[0], ReadyCommand)
    assert request.commands[0].details == "host is in maintenance"
    with pytest.raises(TimeoutError):
        await ms.wait_for_host(GUID, timeout=0.1)


async def test_host_persists_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ManagementServer.create(state_dir=state)
    ctx = agent_tls_context(first.ca, tmp_path, cert_from=first.ca)
    async with running(first), trio.open_nursery() as nursery:
        await (await FakeAgent.connect(nursery, first, ctx)).startup()
        before = await first.wait_for_host(GUID, timeout=5)
        nursery.cancel_scope.cancel()

    second = ManagementServer.create(state_dir=state)
    assert second.ca.cert_pem == first.ca.cert_pem
    stored = second.db.get(GUID)
    assert stored is not None
    assert (stored.id, stored.uuid, stored.status) == (before.id, before.uuid, "Disconnected")
    async with running(second), trio.open_nursery() as nursery:
        agent = await FakeAgent.connect(nursery, second, ctx)
        answer = await agent.startup()
        after = await second.wait_for_host(GUID, timeout=5)
        other = await FakeAgent.connect(nursery, second, ctx)
        await other.startup(GUID2)
        newcomer = await second.wait_for_host(GUID2, timeout=5)
        nursery.cancel_scope.cancel()
    assert answer.host_uuid == before.uuid
    assert (after.id, after.uuid) == (before.id, before.uuid)
    assert newcomer.id != before.id
    ready = (await agent.wait_for(ReadyCommand)).commands[0]
    assert isinstance(ready, ReadyCommand) and ready.host_id == before.id


async def test_migrate_refuses_secured_to_unsecured(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    secured = await FakeAgent.connect(nursery, ms, ctx)
    await secured.startup(GUID, secured=True)
    plain = await FakeAgent.connect(nursery, ms, ctx)
    await plain.startup(GUID2, secured=False, ip="192.0.2.20")
    await ms.wait_for_host(GUID, timeout=5, secured=True)
    await ms.wait_for_host(GUID2, timeout=5, secured=False)
    for source, destination in ((GUID, GUID2), (GUID2, GUID)):
        with pytest.raises(MigrationRefused, match="secured"):
            await ms.migrate("i-2-10-VM", source, destination)
    for agent in (secured, plain):
        assert all(not isinstance(r.commands[0], PrepareForMigrationCommand) for r in agent.seen)


async def test_migrate_between_secured_hosts(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    source = await FakeAgent.connect(nursery, ms, ctx)
    await source.startup(GUID, secured=True)
    destination = await FakeAgent.connect(nursery, ms, ctx)
    await destination.startup(GUID2, secured=True, ip="192.0.2.20")
    await ms.wait_for_host(GUID2, timeout=5, secured=True)
    to = {"name": "i-2-10-VM", "cpus": 1, "speed": 500, "vncPassword": "pw"}
    migration = await ms.migrate("i-2-10-VM", GUID, GUID2, timeout=30, vm_to=to)
    answer = migration.answer
    assert isinstance(answer, MigrateAnswer) and answer.result and migration.migrated
    prepare = (await destination.wait_for(PrepareForMigrationCommand)).commands[0]
    assert isinstance(prepare, PrepareForMigrationCommand)
    assert prepare.vm_name == "i-2-10-VM" and prepare.vm == to
    migrate = (await source.wait_for(MigrateCommand)).commands[0]
    assert isinstance(migrate, MigrateCommand)
    assert (migrate.vm_name, migrate.dest_ip, migrate.host_guid) == (
        "i-2-10-VM",
        "192.0.2.20",
        GUID2,
    )
    # VirtualMachineManagerImpl.migrate's order and values: the destination's shares, the
    # TO of the prepare, no wait of its own on the plain path (the MS's applies).
    assert migrate.new_vm_cpu_shares == 250 and migrate.vm_to == to
    assert migrate.wait == 0 and not migrate.execute_in_sequence
    check = (await destination.wait_for(CheckVirtualMachineCommand)).commands[0]
    assert isinstance(check, CheckVirtualMachineCommand) and check.vm_name == "i-2-10-VM"
    assert [(s.host, type(s.command).__name__, s.verdict.ok) for s in migration.steps] == [
        (GUID2, "PrepareForMigrationCommand", True),
        (GUID, "MigrateCommand", True),
        (GUID2, "CheckVirtualMachineCommand", True),
    ]


async def test_client_certificates_checked_when_required(tmp_path: Path) -> None:
    server = ManagementServer.create(state_dir=tmp_path / "ms", require_client_cert=True)
    other = LabCA.create(tmp_path / "other", common_name="other.example")
    async with running(server), trio.open_nursery() as nursery:
        foreign = agent_tls_context(server.ca, tmp_path, cert_from=other, name="foreign")
        with pytest.raises(ConnectionLost):
            await FakeAgent.connect(nursery, server, foreign)
        with pytest.raises(ConnectionLost):
            await FakeAgent.connect(nursery, server, agent_tls_context(server.ca, tmp_path))
        good = agent_tls_context(server.ca, tmp_path, cert_from=server.ca, name="good")
        agent = await FakeAgent.connect(nursery, server, good)
        assert (await agent.startup()).result
        nursery.cancel_scope.cancel()


async def test_control_api_send_and_hosts(
    ms: ManagementServer, ctx: ssl.SSLContext, nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = await nursery.start(ControlServer(ms, tmp_path / "control.sock").serve)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    agent = await FakeAgent.connect(nursery, ms, ctx)
    await agent.startup(secured=True)
    record = await ms.wait_for_host(GUID, timeout=5)

    reply = await control_request(
        path,
        {
            "op": "send",
            "host": GUID,
            "commands": [{"com.cloud.agent.api.CheckHealthCommand": {}}],
            "timeout": 5,
        },
    )
    assert reply["ok"] is True
    ((name, fields),) = reply["answers"][0].items()
    assert name == "com.cloud.agent.api.CheckHealthAnswer"
    assert fields["result"] is True

    reply = await control_request(path, {"op": "hosts"})
    assert reply["ok"] is True
    (host,) = reply["hosts"]
    expected: dict[str, Any] = {"id": record.id, "guid": GUID, "status": "Up"}
    assert {k: host[k] for k in expected} == expected
    assert host["connected"] is True and host["secured"] is True

    reply = await control_request(path, {"op": "send", "host": "nope", "commands": []})
    assert reply["ok"] is False and reply["error"]
    reply = await control_request(path, {"op": "send", "host": "nope", "commands": [{"x": {}}]})
    assert reply == {"ok": False, "error": "host nope is not connected"}
    assert (await control_request(path, {"op": "dance"}))["ok"] is False
    assert (await ControlServer(ms, path).handle(b"{not json"))["ok"] is False


def test_ca_files_and_signing(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert LabCA.load_or_create(tmp_path / "ca").cert_pem == ca.cert_pem
    assert ca.certificate.subject.rfc4514_string() == "CN=ca.cloudstack.apache.org"

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvm1")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kvm1.lab")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = ca.sign_csr(
        csr.public_bytes(serialization.Encoding.PEM), extra_sans=["10.0.0.5", "kvm1.lab"]
    )
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject == csr.subject
    assert cert.issuer == ca.certificate.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # CloudStack's order: IP addresses, then DNS names, each once.
    assert list(sans) == [
        x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
        x509.DNSName("kvm1.lab"),
    ]
    # As CloudStack issues host certificates: key identifiers and SANs, nothing else.
    assert {type(e.value) for e in cert.extensions} == {
        x509.AuthorityKeyIdentifier,
        x509.SubjectKeyIdentifier,
        x509.SubjectAlternativeName,
    }
    cert.verify_directly_issued_by(ca.certificate)

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    _, expired = ca.issue("old", not_before=past, not_after=past + dt.timedelta(days=1))
    assert x509.load_pem_x509_certificate(expired).not_valid_after_utc < dt.datetime.now(dt.UTC)
