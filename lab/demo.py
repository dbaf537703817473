"""`make demo`: the product's main job, end to end.

What exists today is the protocol core; this prints which parts of the story are built and
runs the part that works (a protocol exchange between an agent and an MS over real TLS).
"""

from __future__ import annotations

import ssl
import sys

import trustme

from protocol import Connection, HandshakeComplete, Request, Response, Session
from protocol.messages import PingAnswer, PingRoutingCommand, StartupAnswer, StartupRoutingCommand


def _pump(a: Connection, b: Connection, data: bytes) -> list[object]:
    events: list[object] = []
    for _ in range(8):
        if data:
            b.receive_data(data)
        while (ev := b.next_event()) is not None:
            events.append(ev)
        back = b.data_to_send()
        if back:
            a.receive_data(back)
        while (ev := a.next_event()) is not None:
            events.append(ev)
        data = a.data_to_send()
        if not back and not data:
            break
    return events


def main() -> int:
    ca = trustme.CA(organization_name="demo MS CA")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert("ms.demo").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    ca.configure_trust(client_ctx)
    ca.issue_cert("agent.demo").configure_cert(client_ctx)

    agent = Connection(Session.for_agent(), client_ctx, server_side=False)
    ms = Connection(Session.for_management(mgmt_id=1), server_ctx, server_side=True)
    events = _pump(agent, ms, agent.initiate())
    print(f"mutual TLS: {sum(isinstance(e, HandshakeComplete) for e in events)} handshakes done")

    _, wire = agent.send_request([StartupRoutingCommand(name="demo-host", cpus=2)])
    (startup,) = _pump(agent, ms, wire)
    assert isinstance(startup, Request)
    print(f"MS received {startup.commands[0].java_class} seq={startup.sequence}")
    (answer,) = _pump(ms, agent, ms.send_response(startup, [StartupAnswer(ping_interval=60)]))
    assert isinstance(answer, Response)
    print(f"agent received {answer.answers[0].java_class} flags=0x{int(answer.header.flags):02x}")
    _, wire = agent.send_request([PingRoutingCommand(host_id=1)], stop_on_error=True)
    (ping,) = _pump(agent, ms, wire)
    assert isinstance(ping, Request)
    (pong,) = _pump(ms, agent, ms.send_response(ping, [PingAnswer()]))
    assert isinstance(pong, Response)
    print("ping answered")
    print(
        "\nNot built yet: the agent daemon, the lab management server and hosts, "
        "migration and certificate handling (see the open issues)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
