"""Codec throughput: messages per second to encode and decode, with and without the Link.

Run: ``python -m bench.codec``. Prints a table; both rows of a message are measured in
the same run so that their ratio is meaningful on any machine.
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import trustme

from protocol.link import Link
from protocol.messages.host import PingRoutingCommand, StartupRoutingCommand
from protocol.model import Message
from protocol.session import Role, Session


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert("ms.bench").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    ca.configure_trust(client)
    return client, server


def _linked_pair() -> tuple[Link, Link]:
    cctx, sctx = _contexts()
    client, server = Link(cctx, server_side=False), Link(sctx, server_side=True)
    data = client.initiate()
    for _ in range(6):
        if data:
            server.receive_data(data)
        while server.next_event() is not None:
            pass
        if back := server.data_to_send():
            client.receive_data(back)
        while client.next_event() is not None:
            pass
        data = client.data_to_send()
    return client, server


def _rate(step: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        step()
        count += 1
    return count / (time.perf_counter() - start)


def _startup_100k() -> StartupRoutingCommand:
    details = {f"detail.{i:05d}": "x" * 40 for i in range(1700)}
    return StartupRoutingCommand(name="bench", host_details=details)


def run(seconds: float = 1.0) -> list[dict[str, Any]]:
    messages: dict[str, Message] = {
        "ping": PingRoutingCommand(host_id=5),
        "startup 100 KiB": _startup_100k(),
    }
    rows = []
    for name, message in messages.items():
        sender, receiver = Session(Role.AGENT), Session(Role.AGENT)

        def plain(m: Message = message, s: Session = sender, r: Session = receiver) -> None:
            _, data = s.send_request([m], expect_response=False)
            r.receive_message(data)

        client, server = _linked_pair()

        def linked(
            m: Message = message,
            s: Session = sender,
            r: Session = receiver,
            c: Link = client,
            v: Link = server,
        ) -> None:
            _, data = s.send_request([m], expect_response=False)
            v.receive_data(c.send_message(data))
            event = v.next_event()
            r.receive_message(event.data)  # type: ignore[union-attr]

        _, sample = sender.send_request([message], expect_response=False)
        plain_rate = _rate(plain, seconds)
        linked_rate = _rate(linked, seconds)
        rows.append(
            {
                "message": name,
                "wire_bytes": len(sample),
                "codec_msgs_per_s": round(plain_rate),
                "codec_tls_msgs_per_s": round(linked_rate),
                "tls_over_codec_time": round(plain_rate / linked_rate, 2),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'message':<18}{'bytes':>9}{'codec msg/s':>14}{'+TLS msg/s':>13}{'TLS cost':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['message']:<18}{r['wire_bytes']:>9}{r['codec_msgs_per_s']:>14}"
            f"{r['codec_tls_msgs_per_s']:>13}{r['tls_over_codec_time']:>9}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = run(args.seconds)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
