"""QEMU's DH parameters (agent.certs.dhparams): the RFC 7919 group, written once, QEMU reads it."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.certs.dhparams import (
    DH_PARAMS,
    FFDHE3072_PEM,
    dh_numbers,
    ensure_dh_params,
    needs_dh_params,
    problem,
)
from agent.certs.store import CertStore
from lab.ca import LabCA
from tests.agent_env import ROOT
from tests.conftest_lab import lab_required


def _floor_e_shifted(bits: int) -> int:
    """floor(2**bits * e), exactly: e's series summed with integers up to a huge k!."""
    k = 2 * bits  # k! far exceeds 2**bits: the tail is far below one unit
    fact = math.factorial(k)
    total, term = 0, fact
    for i in range(1, k + 2):
        total += term  # fact / (i-1)!
        term //= i
    return (total << bits) // fact


def rfc7919_prime(bits: int) -> int:
    """RFC 7919 appendix A: p = 2^b - 2^(b-64) + {[2^(b-130) e] + X} * 2^64 - 1."""
    x = {2048: 560316, 3072: 2625351}[bits]
    return int(2**bits - 2 ** (bits - 64) + (_floor_e_shifted(bits - 130) + x) * 2**64 - 1)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | 2]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + body


def pkcs3_pem(*numbers: int, label: str = "DH PARAMETERS") -> bytes:
    """PEM of SEQUENCE { INTEGER... } (PKCS#3 DHParameter for ``p, g``); as OpenSSL writes."""
    ints = b"".join(_der(0x02, x.to_bytes(x.bit_length() // 8 + 1, "big")) for x in numbers)
    b64 = base64.b64encode(_der(0x30, ints)).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


@pytest.fixture
def cloud_ca(tmp_path: Path) -> LabCA:
    return LabCA.create(tmp_path / "cloud-ca")


def _installed(tmp_path: Path, ca: LabCA) -> CertStore:
    store = CertStore(tmp_path / "certs")
    csr = store.new_csr("kvm1.example.org", ["kvm1"], ["10.0.0.5"])
    store.install(ca.sign_csr(csr), ca.cert_pem)
    return store


def test_the_constant_is_rfc7919_ffdhe3072() -> None:
    p, g = dh_numbers(FFDHE3072_PEM)
    assert p == rfc7919_prime(3072)
    assert g == 2
    assert pkcs3_pem(p, g) == FFDHE3072_PEM  # the test's encoder writes what OpenSSL wrote
    # The formula itself, checked on the RFC's printed ffdhe2048 prime (first and last words).
    assert f"{rfc7919_prime(2048):x}".upper().startswith("FFFFFFFFFFFFFFFFADF85458A2BB4A9A")
    assert f"{rfc7919_prime(2048):x}".upper().endswith("886B423861285C97FFFFFFFFFFFFFFFF")


def test_import_writes_dh_params_once(tmp_path: Path, cloud_ca: LabCA) -> None:
    root = tmp_path / "root"
    store = _installed(tmp_path, cloud_ca)
    changed = store.link_pki(root)
    dh_file = root / DH_PARAMS
    assert str(dh_file) in changed
    assert dh_file.read_bytes() == FFDHE3072_PEM
    assert dh_file.stat().st_mode & 0o777 == 0o644
    inode = dh_file.stat().st_ino
    # Further imports (CLI this time) leave it alone: same file, not rewritten.
    (tmp_path / "c.pem").write_bytes(cloud_ca.sign_csr(store.new_csr("kvm1", [], ["10.0.0.5"])))
    (tmp_path / "ca.pem").write_bytes(cloud_ca.cert_pem)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "keystore-cert-import",
            "--cert-dir",
            str(store.dir),
            "--cert",
            str(tmp_path / "c.pem"),
            "--ca",
            str(tmp_path / "ca.pem"),
            "--root",
            str(root),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert dh_file.stat().st_ino == inode
    assert store.link_pki(root) == []


def test_cli_import_into_an_empty_root_writes_dh_params(tmp_path: Path, cloud_ca: LabCA) -> None:
    store = CertStore(tmp_path / "certs")
    (tmp_path / "c.pem").write_bytes(cloud_ca.sign_csr(store.new_csr("kvm1", [], ["10.0.0.5"])))
    (tmp_path / "ca.pem").write_bytes(cloud_ca.cert_pem)
    root = tmp_path / "root"
    argv = ["keystore-cert-import", "--cert-dir", str(store.dir), "--root", str(root)]
    argv += ["--cert", str(tmp_path / "c.pem"), "--ca", str(tmp_path / "ca.pem")]
    done = subprocess.run(
        [sys.executable, "-m", "agent", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (root / DH_PARAMS).read_bytes() == FFDHE3072_PEM


def test_an_operators_valid_parameters_are_kept(tmp_path: Path) -> None:
    own = pkcs3_pem(rfc7919_prime(2048), 2)
    path = tmp_path / DH_PARAMS
    path.parent.mkdir(parents=True)
    path.write_bytes(own)
    assert needs_dh_params(tmp_path) is None
    assert ensure_dh_params(tmp_path) is None
    assert path.read_bytes() == own


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not PEM DH parameters"),
        (b"garbage\n", "not PEM DH parameters"),
        (FFDHE3072_PEM[:200], "DH parameters"),  # truncated
        (pkcs3_pem(2**521 - 1, 2), "521-bit prime is too weak"),
        (pkcs3_pem(rfc7919_prime(3072) + 2, 2), "not prime"),
        (pkcs3_pem(rfc7919_prime(3072), 1), "generator 1 is out of range"),
        (pkcs3_pem(rfc7919_prime(3072)), "malformed"),  # no generator
        # X9.42 (p, g, q): OpenSSL's other format; GnuTLS reads PKCS#3 only.
        (
            pkcs3_pem(
                rfc7919_prime(3072), 2, (rfc7919_prime(3072) - 1) // 2, label="X9.42 DH PARAMETERS"
            ),
            "not PEM DH parameters",
        ),
    ],
    ids=["empty", "garbage", "truncated", "weak", "composite", "g1", "no-g", "x942"],
)
def test_unusable_parameters_are_replaced(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / DH_PARAMS
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    why = problem(content)
    assert why is not None and reason in why
    assert ensure_dh_params(tmp_path) == path
    assert path.read_bytes() == FFDHE3072_PEM


def test_a_dangling_symlink_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / DH_PARAMS
    path.parent.mkdir(parents=True)
    path.symlink_to(tmp_path / "nowhere.pem")
    assert needs_dh_params(tmp_path) == "missing"
    assert ensure_dh_params(tmp_path) == path
    assert not path.is_symlink() and path.read_bytes() == FFDHE3072_PEM


def _qemu_tls_object(qemu_dir: Path) -> dict[str, object]:
    """QMP ``object-add`` of server TLS credentials from ``qemu_dir``: QEMU's own answer."""
    commands = [
        {"execute": "qmp_capabilities"},
        {
            "execute": "object-add",
            "id": "creds",
            "arguments": {
                "qom-type": "tls-creds-x509",
                "id": "tls0",
                "dir": str(qemu_dir),
                "endpoint": "server",
                "verify-peer": True,
            },
        },
        {"execute": "quit"},
    ]
    argv = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
    done = subprocess.run(
        [*argv, "-qmp", "stdio"],
        input="".join(json.dumps(c) + "\n" for c in commands),
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in done.stdout.splitlines():
        reply = json.loads(line)
        if reply.get("id") == "creds":
            return dict(reply)
    raise AssertionError(f"no answer from QEMU: {done.stdout!r} {done.stderr!r}")


def test_qemu_loads_the_parameters(tmp_path: Path, cloud_ca: LabCA) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        if lab_required():
            pytest.fail("qemu-system-x86_64 is required here (CI or KVMLAB_REQUIRED)")
        pytest.skip("needs qemu-system-x86_64")
    root = tmp_path / "root"
    _installed(tmp_path, cloud_ca).link_pki(root)
    qemu_dir = root / "etc/pki/qemu"
    assert _qemu_tls_object(qemu_dir) == {"return": {}, "id": "creds"}
    # The control: QEMU does read this very file (a bad one fails the credentials)...
    (qemu_dir / "dh-params.pem").write_bytes(b"garbage\n")
    refused = _qemu_tls_object(qemu_dir)
    assert "Unable to load DH parameters" in json.dumps(refused)
    # ...and the agent repairs it.
    assert ensure_dh_params(root) == qemu_dir / "dh-params.pem"
    assert _qemu_tls_object(qemu_dir) == {"return": {}, "id": "creds"}
    assert os.stat(qemu_dir / "dh-params.pem").st_mode & 0o777 == 0o644
