"""Session state machines of both ends, pushed through real in-memory TLS peers."""

from __future__ import annotations

import itertools
import random

import pytest

from lab.ca import LabCA
from protocol import (
    BodyError,
    Connection,
    Flags,
    HandshakeComplete,
    LinkClosed,
    Request,
    Response,
    Role,
    Session,
    StartupRequired,
    UnexpectedResponse,
)
from protocol.connection import ConnectionEvent
from protocol.header import Header
from protocol.messages.host import (
    PingAnswer,
    PingRoutingCommand,
    ReadyAnswer,
    ReadyCommand,
    ShutdownCommand,
    StartupAnswer,
    StartupRoutingCommand,
)
from protocol.model import Answer
from tests.conftest import client_context, tls12_server_context


def deliver(to: Connection, data: bytes) -> list[ConnectionEvent]:
    to.receive_data(data)
    events = []
    while (ev := to.next_event()) is not None:
        events.append(ev)
    return events


def pair(ca: LabCA) -> tuple[Connection, Connection]:
    agent = Connection(Session.for_agent(), client_context(ca), server_side=False)
    ms = Connection(
        Session.for_management(mgmt_id=0xABC, rng=random.Random(1)),
        tls12_server_context(ca),
        server_side=True,
    )
    to_ms = agent.initiate()
    seen: list[ConnectionEvent] = []
    for _ in range(10):
        seen += deliver(ms, to_ms)
        seen += deliver(agent, ms.data_to_send())
        to_ms = agent.data_to_send()
        if not to_ms:
            break
    assert sum(isinstance(e, HandshakeComplete) for e in seen) == 2
    return agent, ms


def test_agent_sequence_starts_at_zero_and_ms_at_random_shifted() -> None:
    agent = Session.for_agent()
    req0, _ = agent.send_request([StartupRoutingCommand()])
    req1, _ = agent.send_request([PingRoutingCommand()], stop_on_error=True)
    assert (req0.sequence, req1.sequence) == (0, 1)
    assert int(req0.header.flags) == 0x01
    assert int(req1.header.flags) == 0x03
    assert req0.header.mgmt_id == -1
    ms = Session.for_management(mgmt_id=7, rng=random.Random(3))
    first = ms.send_request([ReadyCommand()], stop_on_error=True)[0].sequence
    assert first % (1 << 48) == 0 and 0 <= first >> 48 <= 32767
    assert ms.send_request([ReadyCommand()])[0].sequence == first + 1


def test_agent_sessions_can_share_one_counter() -> None:
    counter = itertools.count()
    first = Session.for_agent(sequences=counter)
    assert [first.send_request([PingRoutingCommand()])[0].sequence for _ in range(3)] == [0, 1, 2]
    second = Session.for_agent(agent_id=5, sequences=counter)
    assert second.send_request([StartupRoutingCommand()])[0].sequence == 3
    assert Session.for_agent().send_request([StartupRoutingCommand()])[0].sequence == 0


def test_full_exchange_through_tls(ca: LabCA) -> None:
    agent, ms = pair(ca)
    startup, wire = agent.send_request([StartupRoutingCommand(name="kvm1")])
    (req,) = deliver(ms, wire)
    assert isinstance(req, Request)
    assert req.commands == (StartupRoutingCommand(name="kvm1"),)
    assert ms.session.started

    (resp,) = deliver(agent, ms.send_response(req, [StartupAnswer(host_id=0, ping_interval=5)]))
    assert isinstance(resp, Response)
    assert resp.request == startup
    assert int(resp.header.flags) == 0x20  # FROM_SERVER set, REQUEST clear

    ms.session.agent_id = 42
    ready, wire = ms.send_request([ReadyCommand(host_id=42)], stop_on_error=True)
    assert int(ready.header.flags) == 0x27
    (got,) = deliver(agent, wire)
    assert isinstance(got, Request) and got.in_sequence and got.stop_on_error
    (answer,) = deliver(ms, agent.send_response(got, [ReadyAnswer()]))
    assert isinstance(answer, Response)
    assert int(answer.header.flags) == 0x06
    assert answer.header.agent_id == 42


def test_big_compressed_message_and_many_in_one_read(ca: LabCA) -> None:
    agent, ms = pair(ca)
    deliver(ms, agent.send_request([StartupRoutingCommand()])[1])
    details = {f"key.{i:06d}": f"value {i} " * 8 for i in range(2600)}  # > 200 KiB of JSON
    big = StartupRoutingCommand(host_details=details)
    request, wire = agent.send_request([big])
    assert request.header.flags & Flags.COMPRESSED
    assert request.header.length > 200 * 1024
    pings = [agent.send_request([PingRoutingCommand(host_id=i)])[1] for i in range(3)]
    events = deliver(ms, wire + b"".join(pings))
    assert [type(e) for e in events] == [Request] * 4
    assert isinstance(events[0], Request)
    assert events[0].commands == (big,)
    pinged = [e.commands[0] for e in events[1:] if isinstance(e, Request)]
    assert [p.host_id for p in pinged if isinstance(p, PingRoutingCommand)] == [0, 1, 2]


def test_ms_discards_anything_before_startup(ca: LabCA) -> None:
    agent, ms = pair(ca)
    agent.session.forget(0)
    with pytest.raises(StartupRequired, match="must be a StartupRoutingCommand"):
        deliver(ms, agent.send_request([PingRoutingCommand()])[1])
    # The connection survives: a proper startup is then accepted.
    (req,) = deliver(ms, agent.send_request([StartupRoutingCommand()])[1])
    assert isinstance(req, Request)


def test_response_pairing_by_sequence(ca: LabCA) -> None:
    agent, ms = pair(ca)
    (startup,) = deliver(ms, agent.send_request([StartupRoutingCommand()])[1])
    assert isinstance(startup, Request)
    p1, w1 = agent.send_request([PingRoutingCommand(host_id=1)])
    p2, w2 = agent.send_request([PingRoutingCommand(host_id=2)])
    r1, r2 = deliver(ms, w1 + w2)
    assert isinstance(r1, Request) and isinstance(r2, Request)
    # Answered out of order: each answer still finds its request.
    events = deliver(ms_answer := agent, ms.send_response(r2, [PingAnswer()]))
    events += deliver(ms_answer, ms.send_response(r1, [PingAnswer()]))
    assert [e.request for e in events if isinstance(e, Response)] == [p2, p1]
    assert agent.session.in_flight == 1  # only the startup awaits an answer
    with pytest.raises(UnexpectedResponse, match="matches no request"):
        deliver(agent, ms.send_response(r1, [PingAnswer()]))


def test_a_request_s_tag_comes_back_with_its_response_or_when_all_are_forgotten(
    ca: LabCA,
) -> None:
    """The session's table of requests in flight is the only one: a transport keeps its
    waiters there (the tag), not in a second table."""
    agent, ms = pair(ca)
    (startup,) = deliver(ms, agent.send_request([StartupRoutingCommand()], tag="startup")[1])
    assert isinstance(startup, Request)
    _, wire = agent.send_request([PingRoutingCommand(host_id=1)], tag="ping")
    (ping,) = deliver(ms, wire)
    assert isinstance(ping, Request)
    (answer,) = deliver(agent, ms.send_response(ping, [PingAnswer()]))
    assert isinstance(answer, Response) and answer.tag == "ping"
    assert agent.session.forget_all() == ["startup"]
    assert agent.session.in_flight == 0


def test_bad_body_error_carries_header_and_connection_goes_on(ca: LabCA) -> None:
    agent, ms = pair(ca)
    deliver(ms, agent.send_request([StartupRoutingCommand()])[1])
    header = Header(Flags.REQUEST, 99, 5, -1, 3, 3)
    with pytest.raises(BodyError) as info:
        deliver(ms, agent.link.send_message(header.encode() + b"[1,2]"))
    assert info.value.header == header
    (ok,) = deliver(ms, agent.send_request([PingRoutingCommand()])[1])
    assert isinstance(ok, Request)


def test_shutdown_is_in_sequence_and_close(ca: LabCA) -> None:
    agent, ms = pair(ca)
    deliver(ms, agent.send_request([StartupRoutingCommand()])[1])
    req, wire = agent.send_request(
        [ShutdownCommand(reason=ShutdownCommand.REQUESTED)], stop_on_error=True
    )
    assert int(req.header.flags) == 0x07
    (got,) = deliver(ms, wire + agent.close())[:1]
    assert isinstance(got, Request)
    assert ms.next_event() is None or True  # close already consumed below
    events = deliver(ms, b"")
    assert events == [] or isinstance(events[0], LinkClosed)


def test_unsupported_answer_shape() -> None:
    agent = Session(Role.AGENT)
    ms = Session.for_management(mgmt_id=1, rng=random.Random(0))
    _, startup = agent.send_request([StartupRoutingCommand()])
    ms.receive_message(startup)
    cmd_req, data = ms.send_request([PingRoutingCommand()], stop_on_error=True)
    got = agent.receive_message(data)
    assert isinstance(got, Request)
    reply = agent.send_response(got, [Answer(result=False, details="Unsupported command")])
    resp = ms.receive_message(reply)
    assert isinstance(resp, Response) and resp.request == cmd_req
    assert resp.answers == (Answer(result=False, details="Unsupported command"),)
