"""The body codec: exact Gson bytes, every class round-trips, every malformed body refused."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Sequence

import pytest

from protocol.codec import GZIP_THRESHOLD, decode_body, encode_body, encode_messages, gson_dumps
from protocol.errors import BodyError
from protocol.messages.certificates import SetupCertificateCommand, SetupKeyStoreCommand
from protocol.messages.enums import StoragePoolType
from protocol.messages.host import (
    HostVmStateReportEntry,
    PingRoutingCommand,
    PowerState,
    StartupRoutingCommand,
)
from protocol.messages.migration import MigrateCommand, MigrateDiskInfo
from protocol.messages.stats import GetVolumeStatsCommand
from protocol.model import Answer, Message, UnknownMessage, message_classes

PING_BODY = (
    b'[{"com.cloud.agent.api.PingRoutingCommand":{"_hostVmStateReport":{},'
    b'"_gatewayAccessible":true,"_vnetAccessible":true,"hostType":"Routing","hostId":5,'
    b'"outOfBand":false,"contextMap":{},"wait":0,"bypassHostMaintenance":false}}]'
)
# The two bodies from CloudStack's own unit tests (wire.md section 4).
GET_VOLUME_STATS = (
    b'[{"com.cloud.agent.api.GetVolumeStatsCommand":{"volumeUuids":'
    b'["dcc860ac-4a20-498f-9cb3-bab4d57aa676"],"poolType":{"name":"NetworkFilesystem"},'
    b'"poolUuid":"e007c270-2b1b-3ce9-ae92-a98b94eef7eb","contextMap":{},"wait":5}}]'
)
# RequestTest.testGoodCommand's twin with a class no one knows (RequestTest.java).
JUNK_COMMAND = GET_VOLUME_STATS.replace(b"GetVolumeStatsCommand", b"SomeJunkCommand")
S2S_ANSWER = (
    b'[{"com.cloud.agent.api.CheckS2SVpnConnectionsAnswer":{"ipToConnected":'
    b'{"10.0.53.13":true},"ipToDetail":{"10.0.53.13":"IPsec SA found;Site-to-site VPN have '
    b'connected"},"details":"10.0.53.13:0:IPsec SA found;Site-to-site VPN have connected'
    b'\\u0026\\n","result":true,"contextMap":{},"wait":0,"bypassHostMaintenance":false}}]'
)


def roundtrip(messages: Sequence[Message]) -> list[Message]:
    data, length, compressed = encode_body(messages)
    return decode_body(data, length=length, compressed=compressed)


def test_ping_body_exact_bytes() -> None:
    # The spec's ping carries an empty report ("no VM runs here"); the default is no report.
    ping = PingRoutingCommand(host_id=5, host_vm_state_report={})
    assert len(PING_BODY) == 224
    assert encode_messages([ping]) == PING_BODY
    assert decode_body(PING_BODY, length=224, compressed=False) == [ping]


def test_a_ping_without_a_report_leaves_the_field_out() -> None:
    # Gson omits a null map: the MS then skips its VM state sync for this ping.
    body = encode_messages([PingRoutingCommand(host_id=5)])
    assert b"_hostVmStateReport" not in body
    (ping,) = decode_body(body, length=len(body), compressed=False)
    assert isinstance(ping, PingRoutingCommand) and ping.host_vm_state_report is None


@pytest.mark.parametrize("body", [JUNK_COMMAND, S2S_ANSWER])
def test_cloudstack_test_bodies_decode_and_reencode_byte_for_byte(body: bytes) -> None:
    (message,) = decode_body(body, length=len(body), compressed=False)
    assert isinstance(message, UnknownMessage)
    assert message.java_class in body.decode()
    assert encode_messages([message]) == body


def test_get_volume_stats_body_decodes_typed_and_is_written_the_4_21_way() -> None:
    # Modelled since the zone messages: the old {"name": ...} pool type is read, the plain
    # string written, and bypassHostMaintenance (a Java primitive) is always written.
    (message,) = decode_body(GET_VOLUME_STATS, length=len(GET_VOLUME_STATS), compressed=False)
    assert message == GetVolumeStatsCommand(
        volume_uuids=["dcc860ac-4a20-498f-9cb3-bab4d57aa676"],
        pool_type=StoragePoolType.NETWORK_FILESYSTEM,
        pool_uuid="e007c270-2b1b-3ce9-ae92-a98b94eef7eb",
        wait=5,
    )
    assert encode_messages([message]) == (
        GET_VOLUME_STATS.replace(b'{"name":"NetworkFilesystem"}', b'"NetworkFilesystem"').replace(
            b'"wait":5}', b'"wait":5,"bypassHostMaintenance":false}'
        )
    )


def test_s2s_answer_fields_decoded() -> None:
    (message,) = decode_body(S2S_ANSWER, length=len(S2S_ANSWER), compressed=False)
    assert isinstance(message, UnknownMessage)
    assert message.fields["details"].endswith("connected&\n")
    assert message.fields["ipToConnected"] == {"10.0.53.13": True}


def test_html_safe_escapes_like_gson() -> None:
    text = "a<b>c&d=e'f\u2028g\"h\\i\nj\u00e9\x01"
    assert gson_dumps(text) == (
        '"a\\u003cb\\u003ec\\u0026d\\u003de\\u0027f\\u2028g\\"h\\\\i\\nj\u00e9\\u0001"'
    )
    assert json.loads(gson_dumps(text)) == text


def test_nulls_omitted_and_subclass_fields_first() -> None:
    body = encode_messages([Answer(result=False)]).decode()
    assert body == (
        '[{"com.cloud.agent.api.Answer":{"result":false,"contextMap":{},"wait":0,'
        '"bypassHostMaintenance":false}}]'
    )


def test_any_field_order_and_unknown_fields() -> None:
    body = (
        b'[{"com.cloud.agent.api.PingRoutingCommand":{"newField":[1,2],"hostId":9,'
        b'"wait":3,"_hostVmStateReport":{"i-2-3-VM":{"state":"PowerOn","host":"g"}}}}]'
    )
    (msg,) = decode_body(body, length=len(body), compressed=False)
    assert msg == PingRoutingCommand(
        host_id=9,
        wait=3,
        host_vm_state_report={
            "i-2-3-VM": HostVmStateReportEntry(state=PowerState.POWER_ON, host="g")
        },
    )


def test_every_message_class_round_trips() -> None:
    protocol_classes = [
        c for c in message_classes().values() if c.__module__.startswith("protocol.")
    ]
    assert len(protocol_classes) >= 28  # every room's classes are registered
    for cls in protocol_classes:
        instance = cls()
        assert roundtrip([instance]) == [instance], cls.__name__
    rich = [
        StartupRoutingCommand(
            guid="g-LibvirtComputingResource",
            name="kvm1",
            cpus=8,
            memory=2**34,
            host_details={"secured": "true", "Host.OS": "Debian"},
            host_tags=["a"],
        ),
        MigrateCommand(
            vm_name="i-2-10-VM",
            dest_ip="10.0.0.2",
            auto_convergence=True,
            migrate_storage={"/p": MigrateDiskInfo(serial_number="s", disk_type="FILE")},
            wait=600,
        ),
    ]
    assert roundtrip(rich) == rich


def test_large_body_compressed_with_uncompressed_length() -> None:
    big = StartupRoutingCommand(host_details={f"k{i}": "v" * 50 for i in range(2000)})
    data, length, compressed = encode_body([big])
    assert compressed
    assert length == len(encode_messages([big])) >= GZIP_THRESHOLD
    assert len(gzip.decompress(data)) == length
    assert decode_body(data, length=length, compressed=True) == [big]
    small_data, _, small_compressed = encode_body([PingRoutingCommand()])
    assert not small_compressed
    assert small_data.startswith(b"[{")


def test_secrets_never_in_repr() -> None:
    ks = SetupKeyStoreCommand(keystore_password="hunter2-secret")
    cert = SetupCertificateCommand(private_key="-----BEGIN PRIVATE KEY-----abc")
    assert "hunter2" not in repr(ks)
    assert "PRIVATE" not in repr(cert)
    # but they do travel on the wire
    assert b"hunter2-secret" in encode_messages([ks])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{}", "must be a JSON array, got object"),
        (b"[]", "array is empty"),
        (b"[1]", "item 0 is not an object"),
        (b'[{"a":{},"b":{}}]', "item 0 is not an object with exactly one"),
        (b'[{"a":[]}]', "fields must be an object"),
        (b'[{"com.cloud.agent.api.PingCommand":{"hostId":"x"}}]', "hostId: expected integer"),
        (b'[{"com.cloud.agent.api.PingCommand":{"hostId":true}}]', "expected integer, got bool"),
        (b'[{"com.cloud.agent.api.PingCommand":{"outOfBand":1}}]', "expected boolean"),
        (b'[{"com.cloud.agent.api.PingCommand":{"hostType":"Bogus"}}]', "not a valid HostType"),
        (b'[{"com.cloud.agent.api.PingCommand":{"hostId":1e400}}]', "out of range"),
        (b'[{"com.cloud.agent.api.PingCommand":{"hostId":1.5}}]', "expected integer"),
        (b'[{"com.cloud.agent.api.PingCommand":{"hostId":99999999999999999999}}]', "64-bit"),
        (b'[{"com.cloud.agent.api.Command":{"contextMap":[]}}]', "expected object"),
        (b'[{"com.cloud.agent.api.Command":{"wait":NaN}}]', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        decode_body(body, length=len(body), compressed=False)


def test_length_mismatch() -> None:
    with pytest.raises(BodyError, match="header says 225"):
        decode_body(PING_BODY, length=225, compressed=False)


def test_corrupt_and_truncated_gzip() -> None:
    data = gzip.compress(PING_BODY)
    with pytest.raises(BodyError, match="corrupt gzip"):
        decode_body(b"not gzip at all", length=224, compressed=True)
    with pytest.raises(BodyError, match="truncated gzip"):
        decode_body(data[:-12], length=224, compressed=True)
    with pytest.raises(BodyError, match="inflates to 224 bytes, header says 300"):
        decode_body(data, length=300, compressed=True)
    with pytest.raises(BodyError, match="trailing data"):
        decode_body(data + b"junk", length=224, compressed=True)


def test_gzip_bomb_is_refused_with_bounded_memory() -> None:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(co.compress(zeros) for _ in range(512)) + co.flush()  # 512 MiB inflated
    tracemalloc.start()
    try:
        with pytest.raises(BodyError, match="inflates past its declared length 8192"):
            decode_body(bomb, length=8192, compressed=True)
        with pytest.raises(BodyError, match="exceeds the maximum"):
            decode_body(bomb, length=1 << 30, compressed=True, max_size=1 << 24)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_a_null_map_value_reads_as_absent_so_what_is_read_re_encodes_to_the_same() -> None:
    # Gson leaves null map values out when it writes; reading them as absent keeps
    # decode(encode(decode(body))) == decode(body) (the fuzz tests' property).
    body = b'[{"com.cloud.agent.api.StartupRoutingCommand":{"hostDetails":{"a":null,"b":"x"}}}]'
    (message,) = decode_body(body, length=len(body), compressed=False)
    assert isinstance(message, StartupRoutingCommand)
    assert message.host_details == {"b": "x"}
    assert roundtrip([message]) == [message]


def test_null_members_inside_a_raw_object_read_as_absent_too() -> None:
    # MigrateCommand keeps its VirtualMachineTO raw; Gson writes no null member at any depth.
    body = (
        b'[{"com.cloud.agent.api.MigrateCommand":{"virtualMachine":{"name":"i-2-3-VM",'
        b'"gpuDevice":{"gpuGroup":null,"gpuCount":0},"bootupScripts":["a",null]}}}]'
    )
    (message,) = decode_body(body, length=len(body), compressed=False)
    assert isinstance(message, MigrateCommand)
    assert message.vm_to == {
        "name": "i-2-3-VM",
        "gpuDevice": {"gpuCount": 0},
        "bootupScripts": ["a", None],
    }
    assert roundtrip([message]) == [message]
