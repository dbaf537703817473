"""Secure live migration and certificate provisioning on two real hypervisor hosts.

Real parts only: libvirtd and QEMU in two namespaces joined by a veth, the lab MS, one
agent process per host, a packet capture on the wire. Needs root (CI runs as root).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud as Cloud
from lab.hosts import Lab, count_marker
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
VM = "guest1"


def _clear_guest(lab: Lab) -> None:
    for host in lab.hosts.values():
        if host.domain_state(VM) is not None:
            host.run(
                ["virsh", "-c", "qemu:///system", "destroy", VM], check=False, capture_output=True
            )
            host.run(
                ["virsh", "-c", "qemu:///system", "undefine", VM], check=False, capture_output=True
            )


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    _clear_guest(lab)
    c = Cloud(lab, tmp_path_factory.mktemp("cloud"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a")
        c.start_agent("a")
        c.start_agent("b")
        lab.hosts["a"].define_guest(VM)
        lab.hosts["a"].wait_guest_filled(VM)
        yield c
    finally:
        c.close()
        # The agents re-linked the hosts' PKI and reloaded libvirtd: give the next module
        # the lab as it was built.
        lab.rebuild()


def _libvirtd_pid(lab: Lab, name: str) -> str:
    done = lab.hosts[name].run(["cat", "/run/libvirtd.pid"], capture_output=True, text=True)
    return str(done.stdout).strip()


def _served_certificate(lab: Lab, client: str, server: str) -> bytes:
    """The certificate the server host's libvirtd presents on 16514, fetched from the client."""
    out = (
        lab.hosts[client]
        .run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"{lab.hosts[server].ip}:16514",
                "-cert",
                "/etc/pki/libvirt/clientcert.pem",
                "-key",
                "/etc/pki/libvirt/private/clientkey.pem",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        .stdout
    )
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert match, out[-2000:]
    return ssl.PEM_cert_to_DER_cert(match.group(0))


def _der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


async def _secure_both(cloud: Cloud) -> None:
    # Runs alone too: the hosts may still be registering.
    hosts = {name: await cloud.wait_host(name) for name in ("a", "b")}
    for name in ("a", "b"):
        if not hosts[name]["secured"]:
            answer = await cloud.provision(name)
            assert answer["result"], answer
    for name in ("a", "b"):
        await cloud.wait_host(name, secured=True)


async def test_tcp_then_provisioning_then_native_tls_migration(
    cloud: Cloud, lab: Lab, tmp_path: Path
) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    assert not (await cloud.wait_host("a"))["secured"]
    assert not (await cloud.wait_host("b"))["secured"]

    # 1. Unsecured hosts: qemu+tcp. The capture sees the guest's memory in clear.
    with lab.capture("a", tmp_path / "tcp.pcap"):
        reply = await cloud.migrate(VM, "a", "b")
    answer = reply["answer"]["com.cloud.agent.api.MigrateAnswer"]
    assert answer["result"], answer
    assert b.domain_state(VM) == "running" and a.domain_state(VM) is None  # source undefined
    plain = await trio.to_thread.run_sync(count_marker, tmp_path / "tcp.pcap")
    assert plain > 1000  # proves the capture sees migration data

    # 2. Certificates in-band; libvirtd takes them without a restart; the VM is untouched.
    pids = {n: _libvirtd_pid(lab, n) for n in ("a", "b")}
    vm_id = b.virsh("domid", VM).strip()
    for name in ("a", "b"):
        answer = await cloud.provision(name)
        assert answer["result"], answer
    for name in ("a", "b"):
        await cloud.wait_host(name, secured=True)
    assert {n: _libvirtd_pid(lab, n) for n in ("a", "b")} == pids
    assert b.virsh("domid", VM).strip() == vm_id and b.domain_state(VM) == "running"
    served = await trio.to_thread.run_sync(_served_certificate, lab, "a", "b")
    assert served == _der(cloud.agent_dir("b") / "certs" / "cloud.crt")
    # Certificates as CloudStack makes them, accepted by libvirtd and (step 3) QEMU: the
    # host's carries no keyUsage/extendedKeyUsage, the CA's keyUsage is certSign|cRLSign.
    host_cert = x509.load_der_x509_certificate(served)
    assert {type(e.value) for e in host_cert.extensions} == {
        x509.AuthorityKeyIdentifier,
        x509.SubjectKeyIdentifier,
        x509.SubjectAlternativeName,
    }
    ca_usage = cloud.ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and not ca_usage.digital_signature
    events = [e["event"] for e in cloud.log_events("b")]
    assert "libvirtd uses the new certificate" in events

    # 3. Secured hosts: qemu+tls with QEMU native TLS. Not one marker on the wire.
    with lab.capture("b", tmp_path / "tls.pcap") as cap:
        reply = await cloud.migrate(VM, "b", "a")
    answer = reply["answer"]["com.cloud.agent.api.MigrateAnswer"]
    assert answer["result"], answer
    assert a.domain_state(VM) == "running" and b.domain_state(VM) is None
    assert await trio.to_thread.run_sync(lab.hosts["a"].wait_guest_filled, VM, 30) >= 0
    assert (cap.packets or 0) > 1000  # the migration did cross this wire
    assert await trio.to_thread.run_sync(count_marker, tmp_path / "tls.pcap") == 0
    # No key material or keystore password in any log of the run (agents and MS).
    for log_file in [cloud.agent_dir(n) / "agent.log" for n in ("a", "b")] + [
        cloud.base / "ms1.log"
    ]:
        text = log_file.read_text()
        assert "PRIVATE KEY" not in text and "lab-keystore-pass" not in text, log_file
        key_lines = (cloud.agent_dir("a") / "certs" / "cloud.key").read_text().splitlines()[1:-1]
        assert not any(line in text for line in key_lines)
    migrate_lines = [e for e in cloud.log_events("b") if e["event"] == "migration started"]
    assert (
        migrate_lines[-1]["uri"] == f"qemu+tls://{a.ip}/system" and migrate_lines[-1]["native_tls"]
    )


def _migrate_command(dest_ip: str, wait: int = 60) -> dict[str, object]:
    return {
        "com.cloud.agent.api.MigrateCommand": {"vmName": VM, "destinationIp": dest_ip, "wait": wait}
    }


async def _assert_failed_and_vm_on_a(
    cloud: Cloud, lab: Lab, answer: dict[str, object], *texts: str, dest_up: bool = True
) -> None:
    assert answer["result"] is False, answer
    details = str(answer["details"])
    for text in texts:
        assert text in details, details
    assert "The VM is still running on this host" in details
    assert lab.hosts["a"].domain_state(VM) == "running"
    if dest_up:
        assert lab.hosts["b"].domain_state(VM) is None
    assert (
        lab.hosts["a"]
        .run(["virsh", "-c", "qemu:///system", "dominfo", VM], capture_output=True, text=True)
        .stdout.count("Persistent:     yes")
        == 1
    )


async def test_destination_libvirtd_down(cloud: Cloud, lab: Lab) -> None:
    await _secure_both(cloud)
    b = lab.hosts["b"]
    await trio.to_thread.run_sync(b.stop_libvirtd)
    try:
        answer = await cloud.send("a", _migrate_command(b.ip))
        await _assert_failed_and_vm_on_a(
            cloud, lab, answer, "refused connection to destination", "16514", dest_up=False
        )
    finally:
        await trio.to_thread.run_sync(b.start_libvirtd)
    with trio.fail_after(30):  # agent B finds its libvirtd again by itself
        while not (await cloud.send("b", {"com.cloud.agent.api.CheckHealthCommand": {}}))["result"]:
            await trio.sleep(0.5)


async def test_destination_certificate_from_another_ca(
    cloud: Cloud, lab: Lab, tmp_path: Path
) -> None:
    await _secure_both(cloud)
    b = lab.hosts["b"]
    rogue = LabCA.create(tmp_path / "rogue-ca")
    key, cert = rogue.issue("b", sans=(b.ip, "b"))
    (tmp_path / "rogue.key").write_bytes(key)
    (tmp_path / "rogue.crt").write_bytes(cert)
    (tmp_path / "rogue-ca.crt").write_bytes(rogue.cert_pem)
    # B provisioned by another CA altogether (libvirtd would refuse a mixed set itself).
    links = {
        "/etc/pki/libvirt/servercert.pem": tmp_path / "rogue.crt",
        "/etc/pki/libvirt/private/serverkey.pem": tmp_path / "rogue.key",
        "/etc/pki/CA/cacert.pem": tmp_path / "rogue-ca.crt",
    }
    saved = {
        p: b.run(["readlink", p], capture_output=True, text=True).stdout.strip() for p in links
    }
    for path, target in links.items():
        b.run(["ln", "-sfn", str(target), path], check=True)
    b.run(["virt-admin", "server-update-tls", "libvirtd"], check=True, capture_output=True)
    try:
        answer = await cloud.send("a", _migrate_command(b.ip))
        await _assert_failed_and_vm_on_a(
            cloud, lab, answer, "not signed by this cloud's CA", "/etc/pki/libvirt/servercert.pem"
        )
    finally:
        for path, target in saved.items():
            b.run(["ln", "-sfn", target, path], check=True)
        b.run(["virt-admin", "server-update-tls", "libvirtd"], check=True, capture_output=True)


async def test_missing_ca_file_on_the_source(cloud: Cloud, lab: Lab) -> None:
    await _secure_both(cloud)
    a = lab.hosts["a"]
    a.run(["mv", "/etc/pki/CA/cacert.pem", "/etc/pki/CA/cacert.pem.moved"], check=True)
    try:
        answer = await cloud.send("a", _migrate_command(lab.hosts["b"].ip))
        await _assert_failed_and_vm_on_a(
            cloud, lab, answer, "/etc/pki/CA/cacert.pem", "is missing on this host"
        )
    finally:
        a.run(["mv", "/etc/pki/CA/cacert.pem.moved", "/etc/pki/CA/cacert.pem"], check=True)


async def test_time_out_aborts_and_the_vm_stays(cloud: Cloud, lab: Lab) -> None:
    await _secure_both(cloud)
    cloud.stop_agent("a")
    cloud.start_agent("a", "vm.migrate.speed=1")  # 1 MiB/s: 128 MiB cannot finish in 20 s
    try:
        await cloud.wait_host("a", secured=True)
        # The wait bounds the whole handling: the job is aborted half-way (at 10 s), which
        # leaves time for libvirt's cancel (seconds here) and the look at both hosts.
        started = trio.current_time()
        answer = await cloud.send("a", _migrate_command(lab.hosts["b"].ip, wait=20))
        assert trio.current_time() - started < 20
        await _assert_failed_and_vm_on_a(
            cloud,
            lab,
            answer,
            f"Migration of VM [{VM}] was cancelled by CloudStack due to time out after 20 seconds",
        )
    finally:
        cloud.stop_agent("a")
        cloud.start_agent("a")
    await cloud.wait_host("a", secured=True)


async def test_agent_recovers_when_libvirtd_restarts_on_an_idle_source(
    cloud: Cloud, lab: Lab
) -> None:
    await cloud.wait_host("a")
    await trio.to_thread.run_sync(lab.hosts["a"].restart_libvirtd)
    with trio.fail_after(30):
        while not (await cloud.send("a", {"com.cloud.agent.api.CheckHealthCommand": {}}))["result"]:
            await trio.sleep(0.5)
    events = [e["event"] for e in cloud.log_events("a")]
    assert "libvirt connection lost" in events and "libvirt connection restored" in events
    assert lab.hosts["a"].domain_state(VM) == "running"
    assert (await cloud.hosts())["a"]["connected"]  # the MS session never dropped


async def test_sigterm_during_a_migration_aborts_it_and_the_vm_stays(
    cloud: Cloud, lab: Lab
) -> None:
    await _secure_both(cloud)
    cloud.stop_agent("a")
    seen = len(cloud.log_events("a"))  # the log file is shared by successive runs

    def events() -> list[dict[str, Any]]:
        return cloud.log_events("a")[seen:]

    async def wait_event(name: str) -> None:
        with trio.fail_after(60):
            while not any(e["event"] == name for e in events()):
                await trio.sleep(0.2)

    # 1 MiB/s: 128 MiB cannot finish before the stop. 8 s of grace: the abort and libvirt's
    # return from the migration call take a few seconds when the machine is loaded.
    cloud.start_agent("a", "vm.migrate.speed=1", "shutdown.grace.seconds=8")
    try:
        await wait_event("host ready")
        await cloud.wait_host("a", secured=True)
        async with trio.open_nursery() as nursery:

            async def migrate() -> None:
                try:
                    await cloud.send("a", _migrate_command(lab.hosts["b"].ip, wait=600))
                except RuntimeError:
                    pass  # the agent left before answering: expected

            nursery.start_soon(migrate)
            await wait_event("migration progress")
            started = trio.current_time()
            code = await trio.to_thread.run_sync(cloud.stop_agent, "a")  # SIGTERM
            took = trio.current_time() - started
        assert code == 0
        assert took < 8 + 5, took  # shutdown.grace.seconds + 5 s
        names = [e["event"] for e in events()]
        assert "aborting the migration" in names, names
        failed = [e for e in events() if e["event"] == "migration failed"]
        assert failed and "was aborted" in failed[-1]["details"], names[-12:]
        assert "The VM is still running on this host" in failed[-1]["details"]
        # abortJob reaches libvirtd at once: the migration runs on a connection of its own, so
        # no call waits behind it (with libvirt 9.0 one could wait up to 5 s: the clean-up's 4 s
        # ran out before the outcome was read).
        aborting = next(e for e in events() if e["event"] == "aborting the migration")
        assert _seconds_between(aborting, failed[-1]) < 2.5
        # Never on neither host: it runs on the source, defined; nothing on the destination.
        assert lab.hosts["a"].domain_state(VM) == "running"
        assert lab.hosts["b"].domain_state(VM) is None
    finally:
        if "a" in cloud.agents:
            cloud.stop_agent("a")
        cloud.start_agent("a")
    await cloud.wait_host("a", secured=True)


def _seconds_between(first: dict[str, Any], then: dict[str, Any]) -> float:
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in (first, then)]
    return (stamps[1] - stamps[0]).total_seconds()


QEMU_PKI = [
    f"/etc/pki/qemu/{n}"
    for n in (
        "ca-cert.pem",
        "server-cert.pem",
        "server-key.pem",
        "client-cert.pem",
        "client-key.pem",
    )
]


async def test_destination_without_qemu_certificates_required_then_preferred(
    cloud: Cloud, lab: Lab, tmp_path: Path
) -> None:
    """B as a host run by CloudStack's Java agent: libvirtd on TLS, no /etc/pki/qemu."""
    for name in ("a", "b"):
        await cloud.wait_host(name)
    await _secure_both(cloud)
    a, b = lab.hosts["a"], lab.hosts["b"]
    for path in QEMU_PKI:
        b.run(["mv", path, path + ".moved"], check=True)
    try:
        # required (the default): refused, the VM untouched, the fix named.
        answer = await cloud.send("a", _migrate_command(b.ip))
        await _assert_failed_and_vm_on_a(
            cloud,
            lab,
            answer,
            "QEMU's TLS credentials",
            "run `kvm-agent setup --secure-libvirtd` on " + b.ip,
            "CloudStack's Java agent: it needs only cloud.crt, cloud.key and cloud.ca.crt",
        )

        # preferred: the control channel's TLS only, said in the answer and the log.
        cloud.stop_agent("a")
        cloud.start_agent("a", "migration.native.tls=preferred")
        await cloud.wait_host("a", secured=True)
        with lab.capture("a", tmp_path / "fallback.pcap"):
            answer = await cloud.send("a", _migrate_command(b.ip))
        assert answer["result"] is True, answer
        details = str(answer["details"])
        assert f"{VM} migrated to {b.ip}" in details
        assert "WARNING" in details and "guest memory crossed the network unencrypted" in details
        assert "kvm-agent setup --secure-libvirtd" in details
        assert (a.domain_state(VM), b.domain_state(VM)) == (None, "running")
        fallback = [
            e for e in cloud.log_events("a") if e["event"].startswith("destination cannot receive")
        ]
        assert fallback and fallback[-1]["level"] == "warning", fallback
        started = [e for e in cloud.log_events("a") if e["event"] == "migration started"]
        assert [e["native_tls"] for e in started[-2:]] == [True, False]
        # What "preferred" costs, seen on the wire: the guest's memory in clear.
        assert await trio.to_thread.run_sync(count_marker, tmp_path / "fallback.pcap") > 1000
    finally:
        for path in QEMU_PKI:
            b.run(["mv", path + ".moved", path], check=False)
        if "a" in cloud.agents:
            cloud.stop_agent("a")
        cloud.start_agent("a")
    await cloud.wait_host("a", secured=True)
    if b.domain_state(VM) == "running":  # back to A over native TLS, for the next tests
        answer = await cloud.send("b", _migrate_command(a.ip))
        assert answer["result"] is True, answer
    assert a.domain_state(VM) == "running"
