"""Certificates: CSR contents, validated atomic installs, crash safety, provisioning in-band."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeAlias

import pytest
import trio
from cryptography import x509

from agent.certs.certinfo import CertificateError
from agent.certs.dhparams import DH_PARAMS, FFDHE3072_PEM
from agent.certs.store import CertStore
from agent.certs.system_pki import PKI_LINKS, certificate_set
from agent.handlers import HandlerRegistry
from agent.handlers.context import CommandContext
from agent.hypervisor.hostinfo import local_addresses
from lab.ca import LabCA
from protocol.messages.certificates import (
    SetupCertificateAnswer,
    SetupCertificateCommand,
    SetupKeystoreAnswer,
    SetupKeyStoreCommand,
)
from protocol.messages.host import StartupRoutingCommand
from protocol.model import Answer, Command, Message
from tests.agent_env import (
    ROOT,
    agent_config,
    agent_dir,
    captured_logs,
    guid_of,
    running_agent,
    running_ms,
)
from tests.cert_env import cloudstack_ca, expired, snapshot, write_set
from tests.test_agent_session import SlowCommand

GUID = guid_of("agent1")
StrPath: TypeAlias = str | os.PathLike[str]  # what os.replace takes


@pytest.fixture
def cloud_ca(tmp_path: Path) -> LabCA:
    return cloudstack_ca(tmp_path / "cloud-ca")


def test_csr_subject_and_sans(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs")
    csr = x509.load_pem_x509_csr(store.new_csr("kvm1.example.org", ["kvm1"], ["10.0.0.5"]))
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "kvm1.example.org"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kvm1.example.org", "kvm1"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    key = tmp_path / "certs" / "pending" / "cloud.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "certs" / "cloud.key").exists()  # the current set is untouched


def test_local_addresses_exclude_loopback_and_link_local() -> None:
    for ip in local_addresses():
        assert not ip.startswith(("127.", "169.254.", "fe80:")) and ip != "::1"


def _signed(ca: LabCA, store: CertStore, ips: tuple[str, ...] = ("10.0.0.5",)) -> bytes:
    csr = store.new_csr("kvm1.example.org", ["kvm1"], list(ips))
    return ca.sign_csr(csr)


def test_good_import_switches_the_whole_set_and_keeps_a_backup(
    tmp_path: Path, cloud_ca: LabCA
) -> None:
    certs = tmp_path / "certs"
    old_key, old_cert = cloud_ca.issue("old", sans=("10.0.0.5",))
    write_set(certs, old_key, old_cert, cloud_ca.cert_pem)  # a CloudStack-style plain set
    store = CertStore(certs)
    cert = _signed(cloud_ca, store)
    info = store.install(cert, cloud_ca.cert_pem)
    assert "kvm1.example.org" in info.subject
    now = snapshot(certs)
    assert now["cloud.crt"] == cert and now["cloud.key"] != old_key
    certificate_set(certs)  # the installed set validates as a whole
    assert (certs / "cloud.key").resolve().stat().st_mode & 0o777 == 0o600
    backups = [
        p for p in (certs / "sets").iterdir() if p.resolve() != (certs / "current").resolve()
    ]
    assert len(backups) == 1 and (backups[0] / "cloud.crt").read_bytes() == old_cert
    assert not (certs / "pending").exists()


@pytest.mark.parametrize("case", ["other_ca", "key_mismatch", "expired", "garbage", "empty"])
def test_bad_certificates_are_rejected_and_nothing_changes(
    tmp_path: Path, cloud_ca: LabCA, case: str
) -> None:
    certs = tmp_path / "certs"
    key, cert = cloud_ca.issue("current", sans=("10.0.0.5",))
    write_set(certs, key, cert, cloud_ca.cert_pem)
    store = CertStore(certs)
    store.install(cert, cloud_ca.cert_pem, key)  # a managed set to compare against
    before = snapshot(certs)
    listing = sorted(str(p) for p in certs.rglob("*"))
    other = LabCA.create(tmp_path / "other-ca")
    new_key, new_cert = cloud_ca.issue("new", sans=("10.0.0.5",))
    other_key, other_cert = other.issue("new", sans=("10.0.0.5",))
    exp_key, exp_cert = expired(cloud_ca)
    attempt = {
        "other_ca": (other_cert, cloud_ca.cert_pem, other_key, "not signed by the given CA"),
        "key_mismatch": (new_cert, cloud_ca.cert_pem, other_key, "does not match the private key"),
        "expired": (exp_cert, cloud_ca.cert_pem, exp_key, "expired on"),
        "garbage": (
            b"-----BEGIN CERTIFICATE-----\nnope\n",
            cloud_ca.cert_pem,
            new_key,
            "not a PEM",
        ),
        "empty": (b"", cloud_ca.cert_pem, new_key, "is empty"),
    }[case]
    with pytest.raises(CertificateError, match=attempt[3]):
        store.install(attempt[0], attempt[1], attempt[2])
    assert snapshot(certs) == before
    assert sorted(str(p) for p in certs.rglob("*")) == listing


def test_pki_links_are_atomic_and_resolve(tmp_path: Path, cloud_ca: LabCA) -> None:
    certs, root = tmp_path / "certs", tmp_path / "root"
    store = CertStore(certs)
    store.install(_signed(cloud_ca, store), cloud_ca.cert_pem)
    changed = store.link_pki(root)
    assert len(changed) == len(PKI_LINKS) + 1  # and QEMU's DH parameters, written once
    assert str(root / DH_PARAMS) in changed
    for rel, name in PKI_LINKS.items():
        assert (root / rel).read_bytes() == (certs / name).read_bytes()
    assert store.link_pki(root) == []  # idempotent
    # A second import switches what every link shows, without touching the links.
    store.install(_signed(cloud_ca, store), cloud_ca.cert_pem)
    assert (root / "etc/pki/CA/cacert.pem").read_bytes() == cloud_ca.cert_pem
    assert (root / "etc/pki/qemu/server-cert.pem").read_bytes() == (
        certs / "cloud.crt"
    ).read_bytes()


def test_a_failure_at_every_step_of_an_import_leaves_a_complete_set(
    tmp_path: Path, cloud_ca: LabCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic companion of the kill -9 test: stop the import at each rename/write."""
    step = 0
    real_replace = os.replace
    while True:
        certs = tmp_path / f"certs-{step}"
        old_key, old_cert = cloud_ca.issue("old", sans=("10.0.0.5",))
        write_set(certs, old_key, old_cert, cloud_ca.cert_pem)
        old = snapshot(certs)
        store = CertStore(certs)
        new_cert = _signed(cloud_ca, store)
        new_key = store.pending_key()
        calls = 0

        def failing_replace(src: StrPath, dst: StrPath, _stop: int = step) -> None:
            nonlocal calls
            calls += 1
            if calls > _stop:
                raise OSError("simulated crash")
            real_replace(src, dst)

        # store.py and fsutil.py both call os.replace: one patch of the os module covers both.
        monkeypatch.setattr("os.replace", failing_replace)
        try:
            store.install(new_cert, cloud_ca.cert_pem)
            finished = True
        except OSError:
            finished = False
        monkeypatch.undo()
        now = snapshot(certs)
        assert now in (
            old,
            {"cloud.key": new_key, "cloud.crt": new_cert, "cloud.ca.crt": cloud_ca.cert_pem},
        ), step
        certificate_set(certs)
        if finished:
            break
        step += 1
    assert step >= 5  # the import really has that many steps to interrupt


def test_kill_9_during_imports_always_leaves_a_consistent_set(
    tmp_path: Path, cloud_ca: LabCA
) -> None:
    certs = tmp_path / "certs"
    key, cert = cloud_ca.issue("start", sans=("10.0.0.5",))
    write_set(certs, key, cert, cloud_ca.cert_pem)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cloud_ca.cert_pem)
    rng = random.Random(1234)
    argv = [
        sys.executable,
        "-m",
        "agent",
        "keystore-cert-import",
        "--cert-dir",
        str(certs),
        "--ca",
        str(ca_file),
        "--no-link",
    ]
    # How long one import takes, to aim the kills across its whole life.
    new_key, new_cert = cloud_ca.issue("probe", sans=("10.0.0.5",))
    (tmp_path / "k.pem").write_bytes(new_key)
    (tmp_path / "c.pem").write_bytes(new_cert)
    started = time.monotonic()
    subprocess.run(
        [*argv, "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    duration = time.monotonic() - started
    killed = completed = 0
    sets = [snapshot(certs)]
    for i in range(40):
        new_key, new_cert = cloud_ca.issue(f"n{i}", sans=("10.0.0.5",))
        (tmp_path / "k.pem").write_bytes(new_key)
        (tmp_path / "c.pem").write_bytes(new_cert)
        expected_new = {
            "cloud.key": new_key,
            "cloud.crt": new_cert,
            "cloud.ca.crt": cloud_ca.cert_pem,
        }
        before = snapshot(certs)
        proc = subprocess.Popen(
            [*argv, "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.6, 1.0) * duration)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        killed += code == -signal.SIGKILL
        completed += code == 0
        after = snapshot(certs)
        assert after in (before, expected_new), f"iteration {i}: mixed set"
        certificate_set(certs)
        sets.append(after)
    assert killed >= 10  # most runs really were interrupted
    # Every run ended by the kill or by finishing: an import that failed on its own is a bug.
    assert killed + completed == 40, (killed, completed)
    # Each import that finished switched to its own set (none exits 0 having changed nothing).
    switches = sum(a != b for a, b in itertools.pairwise(sets))
    assert switches >= completed, (switches, completed)


async def _slow(cmd: Command, ctx: CommandContext) -> Message:
    await trio.sleep(float(cmd.wait or 1))  # "wait" carries the duration
    return Answer(result=True)


async def test_in_band_provisioning_reload_waits_for_running_commands(tmp_path: Path) -> None:
    handlers = HandlerRegistry.with_builtins()
    handlers.register("test.SlowCommand", _slow)
    secret = "Keystore-Pass-0123"
    async with running_ms(tmp_path, ping_interval=1) as ms:
        certs = agent_dir(tmp_path, ms.ca, with_client_cert=False)
        config = agent_config(
            tmp_path,
            f"127.0.0.1:{ms.port}",
            certs,
            **{
                "pki.root": str(tmp_path / "root"),
                "libvirtd.reload": "none",
                "libvirtd.tls.enabled": "true",
            },
        )
        with captured_logs() as logbuf:
            async with running_agent(config, handlers), trio.open_nursery() as nursery:
                first = await ms.wait_for_host(GUID, timeout=10)
                assert not first.secured
                (answer,) = await ms.send_command(
                    GUID, [SetupKeyStoreCommand(keystore_password=secret, validity_days=30)]
                )
                assert isinstance(answer, SetupKeystoreAnswer) and answer.result and answer.csr
                cert = ms.ca.sign_csr(answer.csr.encode())
                slow_done = trio.Event()

                async def slow() -> None:
                    await ms.send_command(GUID, [SlowCommand(wait=2)])
                    slow_done.set()

                nursery.start_soon(slow)
                await trio.sleep(0.2)
                (answer,) = await ms.send_command(
                    GUID,
                    [
                        SetupCertificateCommand(
                            certificate=cert.decode(), ca_certificates=ms.ca.cert_pem.decode()
                        )
                    ],
                )
                assert isinstance(answer, SetupCertificateAnswer) and answer.result, answer
                startups_then = sum(
                    isinstance(r.commands[0], StartupRoutingCommand) for _, r in ms.received
                )
                await trio.sleep(0.5)
                assert not slow_done.is_set()
                assert startups_then == sum(
                    isinstance(r.commands[0], StartupRoutingCommand) for _, r in ms.received
                )  # not yet re-registered
                await slow_done.wait()
                record = await ms.wait_for_host(GUID, timeout=10, secured=True)
                assert record.secured
        assert (tmp_path / "root" / "etc/pki/CA/cacert.pem").read_bytes() == ms.ca.cert_pem
        assert (tmp_path / "root" / DH_PARAMS).read_bytes() == FFDHE3072_PEM  # QEMU's DH group
        text = logbuf.getvalue()
        events = [json.loads(line)["event"] for line in text.splitlines()]
        assert events.index("no command running: reloading libvirtd's TLS files") > events.index(
            "new certificate: libvirtd reload waits until no command is running"
        )
        key_lines = (certs / "cloud.key").read_text().splitlines()[1:-1]
        assert "PRIVATE KEY" not in text and secret not in text
        assert not any(line in text for line in key_lines)
        assert "BEGIN CERTIFICATE" not in text  # no certificate bodies either


def test_expiry_warnings(tmp_path: Path, cloud_ca: LabCA) -> None:
    import datetime as dt

    from agent.certs.expiry import expiry_warning

    now = dt.datetime.now(dt.UTC)
    assert expiry_warning(tmp_path, 30) is None  # no certificate yet
    key, cert = cloud_ca.issue(
        "soon", not_before=now - 10 * dt.timedelta(days=1), not_after=now + dt.timedelta(days=10)
    )
    write_set(tmp_path, key, cert, cloud_ca.cert_pem)
    level, text = expiry_warning(tmp_path, 30) or ("", "")
    assert level == "warning" and "expires in 9 days" in text
    assert expiry_warning(tmp_path, 5) is None
    key, cert = expired(cloud_ca)
    write_set(tmp_path, key, cert, cloud_ca.cert_pem)
    level, text = expiry_warning(tmp_path, 30) or ("", "")
    assert level == "error" and "EXPIRED" in text


def test_secured_needs_valid_certificates_libvirtd_tls_and_qemu_files(
    tmp_path: Path, cloud_ca: LabCA
) -> None:
    from agent.certs.system_pki import evaluate

    certs, root = tmp_path / "certs", tmp_path / "root"
    store = CertStore(certs)
    store.install(_signed(cloud_ca, store), cloud_ca.cert_pem)
    report = evaluate(certs, tls_enabled_setting=False, root=root)
    assert not report.secured and len(report.reasons) == 2  # no libvirtd TLS, no QEMU files
    store.link_pki(root)
    assert not evaluate(certs, tls_enabled_setting=False, root=root).secured
    assert evaluate(certs, tls_enabled_setting=True, root=root).secured
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/libvirtd.conf").write_text("# listen_tls = 0\nlisten_tls = 1\n")
    assert evaluate(certs, tls_enabled_setting=False, root=root).secured
    key, cert = expired(cloud_ca)
    write_set(tmp_path / "expired", key, cert, cloud_ca.cert_pem)
    report = evaluate(tmp_path / "expired", tls_enabled_setting=True, root=root)
    assert not report.secured and "expired" in report.reasons[0]
