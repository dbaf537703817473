"""``kvm-agent setup -s`` on a fake root holding Debian's stock libvirtd.conf and qemu.conf."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.certs.dhparams import DH_PARAMS, FFDHE3072_PEM
from agent.certs.system_pki import LIBVIRTD_CONF, PKI_LINKS, evaluate
from agent.config import read_properties
from agent.setup import confedit
from agent.setup import libvirtd as setup_libvirtd
from lab.ca import LabCA
from tests.cert_env import cloudstack_ca

STOCK = Path("/etc/libvirt")
QEMU_CONF = "etc/libvirt/qemu.conf"
DEFAULTS = "etc/default/libvirtd"
EXPECTED_LIBVIRTD = {
    "listen_tls": "1",
    "listen_tcp": "0",
    "tls_port": '"16514"',
    "auth_tls": '"none"',
    "key_file": '"/etc/pki/libvirt/private/serverkey.pem"',
    "cert_file": '"/etc/pki/libvirt/servercert.pem"',
    "ca_file": '"/etc/pki/CA/cacert.pem"',
}
EXPECTED_QEMU = {"default_tls_x509_cert_dir": '"/etc/pki/qemu"', "default_tls_x509_verify": "1"}
# Settings already active before the run: they must come out unchanged.
EXTRA_LIBVIRTD = 'unix_sock_group = "libvirt"\nlog_level = 3\n'
EXTRA_QEMU = 'user = "libvirt-qemu"\nvnc_listen = "0.0.0.0"\n'
PASSPHRASE = "Sup3rSecretPass"
PROPERTIES = f"""# CloudStack agent configuration
guid=5b6e0ad4-7a8a-4d8c-9d2f-000000000001
host=10.0.0.5@roundrobin
# the keystore (not used by the Python agent)
keystore.passphrase={PASSPHRASE}
zone=1
"""
STOCK_DEFAULTS = """# Customizations for the libvirtd.service systemd unit
#LIBVIRTD_ARGS="--timeout 120"

# If systemd socket activation is disabled, then the following
# can be used to listen on TCP/TLS sockets
#LIBVIRTD_ARGS="--listen"
"""


def _stock(name: str) -> Path:
    path = STOCK / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (Debian's libvirt-daemon-system provides it)")
    if not os.access(path, os.R_OK):
        pytest.skip(f"{path} is not readable by this user")
    return path


@dataclass
class Host:
    root: Path
    cert_dir: Path
    config: Path
    ca: LabCA

    def write_certs(self, key: bytes, cert: bytes, ca_pem: bytes) -> None:
        (self.cert_dir / "cloud.key").write_bytes(key)
        (self.cert_dir / "cloud.key").chmod(0o600)
        (self.cert_dir / "cloud.crt").write_bytes(cert)
        (self.cert_dir / "cloud.ca.crt").write_bytes(ca_pem)


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return cloudstack_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def host(tmp_path: Path, lab_ca: LabCA) -> Host:
    libvirtd_conf, qemu_conf = _stock("libvirtd.conf"), _stock("qemu.conf")
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2(libvirtd_conf, root / LIBVIRTD_CONF)
    shutil.copy2(qemu_conf, root / QEMU_CONF)
    with (root / LIBVIRTD_CONF).open("a") as fh:
        fh.write(EXTRA_LIBVIRTD)
    with (root / QEMU_CONF).open("a") as fh:
        fh.write(EXTRA_QEMU)
    (root / DEFAULTS).parent.mkdir(parents=True)
    (root / DEFAULTS).write_text(STOCK_DEFAULTS)
    cert_dir = tmp_path / "etc/cloudstack/agent"
    cert_dir.mkdir(parents=True)
    config = cert_dir / "agent.properties"
    config.write_text(PROPERTIES)
    config.chmod(0o640)
    h = Host(root, cert_dir, config, lab_ca)
    key, cert = lab_ca.issue("kvm1.example.org", sans=("10.0.0.1",))
    h.write_certs(key, cert, lab_ca.cert_pem)
    return h


def run_setup(host: Host, *extra: str) -> tuple[int, str, str, str]:
    """Run ``setup -s`` on the fake root; returns (exit code, stdout, stderr, argv)."""
    parser = argparse.ArgumentParser(prog="kvm-agent")
    setup_libvirtd.add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["setup", "-s", "--root", str(host.root), "--config", str(host.config)]
    argv += ["--cert-dir", str(host.cert_dir), "--firewall", "none", *extra]
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = setup_libvirtd.run(args)
    return rc, out.getvalue(), err.getvalue(), " ".join(argv)


def snapshot(*dirs: Path) -> dict[str, tuple[object, ...]]:
    """Every file and symlink under ``dirs``: content (or target), mtime and mode."""
    out: dict[str, tuple[object, ...]] = {}
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                path = Path(dirpath) / name
                st = path.lstat()
                if path.is_symlink():
                    out[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
                else:
                    out[str(path)] = ("file", path.read_bytes(), st.st_mtime_ns, st.st_mode)
    return out


def active_settings(path: Path) -> dict[str, list[str]]:
    """key -> values of the uncommented ``key = value`` lines."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z_][\w]*)\s*=\s*(.*?)\s*$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(line == other for other in it) for line in small)


# --- the full run -------------------------------------------------------------------------


def test_setup_secures_a_stock_debian_host(host: Host) -> None:
    before = {rel: (host.root / rel).read_text() for rel in (LIBVIRTD_CONF, QEMU_CONF)}
    qemu_mode = (host.root / QEMU_CONF).stat().st_mode
    assert not evaluate(host.cert_dir, tls_enabled_setting=False, root=host.root).secured

    rc, out, err, _ = run_setup(host)

    assert rc == 0, err
    for rel, expected, extra in (
        (LIBVIRTD_CONF, EXPECTED_LIBVIRTD, EXTRA_LIBVIRTD),
        (QEMU_CONF, EXPECTED_QEMU, EXTRA_QEMU),
    ):
        path = host.root / rel
        settings = active_settings(path)
        for key, value in expected.items():
            assert settings[key] == [value], (rel, key)
        for line in extra.splitlines():  # other settings unchanged
            key, _, value = line.partition(" = ")
            assert settings[key] == [value]
        assert set(settings) == set(expected) | {
            line.partition(" = ")[0] for line in extra.splitlines()
        }
        old_lines, new_lines = before[rel].splitlines(), path.read_text().splitlines()
        assert is_subsequence(old_lines, new_lines)  # every comment and line kept, in order
        added = len(new_lines) - len(old_lines)
        assert added == len(expected) + (1 if rel == LIBVIRTD_CONF else 0)  # + the TCP note
    # The stock file has the keys commented out: each active line follows its comment.
    lines = (host.root / LIBVIRTD_CONF).read_text().splitlines()
    assert lines[lines.index("#listen_tls = 0") + 1] == "listen_tls = 1"
    assert lines[lines.index('#ca_file = "/etc/pki/CA/cacert.pem"') + 1] == (
        'ca_file = "/etc/pki/CA/cacert.pem"'
    )
    note = lines.index(setup_libvirtd.TCP_NOTE)
    assert lines[note + 1] == "listen_tcp = 0"
    assert (host.root / QEMU_CONF).stat().st_mode == qemu_mode  # 0600 stays 0600

    # libvirtd is started with --listen (not a systemd root).
    assert active_settings(host.root / DEFAULTS)["LIBVIRTD_ARGS"] == ['"--listen"']
    assert is_subsequence(
        STOCK_DEFAULTS.splitlines(), (host.root / DEFAULTS).read_text().split("\n")
    )
    assert "systemctl mask libvirtd.socket" in out

    for rel, name in PKI_LINKS.items():
        link = host.root / rel
        assert link.is_symlink(), rel
        assert Path(os.readlink(link)) == host.cert_dir / name
        assert link.resolve() == (host.cert_dir / name).resolve()
        assert link.read_bytes() == (host.cert_dir / name).read_bytes()

    # QEMU's DH parameters: the standard group, so QEMU never generates its own.
    dh_file = host.root / DH_PARAMS
    assert dh_file.read_bytes() == FFDHE3072_PEM
    assert dh_file.stat().st_mode & 0o777 == 0o644
    assert f"wrote {dh_file}" in out

    props = read_properties(host.config)
    assert props["libvirtd.tls.enabled"] == "true"
    assert is_subsequence(PROPERTIES.splitlines(), host.config.read_text().splitlines())
    assert host.config.stat().st_mode & 0o777 == 0o640

    report = evaluate(host.cert_dir, tls_enabled_setting=False, root=host.root)
    assert report.secured, report.reasons
    assert "restart libvirtd" in out
    for text in (out, err):
        assert "PRIVATE KEY" not in text
        assert PASSPHRASE not in text


def test_second_run_changes_nothing(host: Host) -> None:
    assert run_setup(host)[0] == 0
    before = snapshot(host.root, host.cert_dir)

    rc, out, err, _ = run_setup(host)

    assert rc == 0, err
    assert snapshot(host.root, host.cert_dir) == before
    assert "nothing changed" in out
    assert "updated" not in out and "linked" not in out
    assert "restart libvirtd" not in out


def test_dry_run_prints_a_diff_and_changes_nothing(host: Host) -> None:
    before = snapshot(host.root, host.cert_dir)

    rc, out, err, _ = run_setup(host, "--dry-run")

    assert rc == 0, err
    assert snapshot(host.root, host.cert_dir) == before
    for path in (host.root / LIBVIRTD_CONF, host.root / QEMU_CONF, host.config):
        assert f"--- {path}\n+++ {path}\n" in out
    assert "\n+listen_tls = 1\n" in out
    assert '\n+default_tls_x509_cert_dir = "/etc/pki/qemu"\n' in out
    assert "\n+libvirtd.tls.enabled=true\n" in out
    assert "keystore.passphrase=<redacted>" in out
    assert PASSPHRASE not in out
    assert f"would link {host.root / 'etc/pki/CA/cacert.pem'}" in out
    assert f"would write {host.root / DH_PARAMS}" in out
    assert not (host.root / DH_PARAMS).exists()
    assert "nothing was changed" in out

    assert run_setup(host)[0] == 0
    rc, out, _, _ = run_setup(host, "--dry-run")
    assert rc == 0
    assert "nothing would change" in out
    assert "---" not in out


def _expired(host: Host) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    key, cert = host.ca.issue("kvm1", sans=("10.0.0.1",), not_before=past, validity_days=30)
    host.write_certs(key, cert, host.ca.cert_pem)


def _garbage(host: Host) -> None:
    (host.cert_dir / "cloud.crt").write_bytes(b"this is not a certificate\n")


def _missing(host: Host) -> None:
    (host.cert_dir / "cloud.key").unlink()


def _other_ca(host: Host) -> None:
    other = LabCA.create(host.cert_dir.parent / "other-ca")
    key, cert = other.issue("kvm1", sans=("10.0.0.1",))
    host.write_certs(key, cert, host.ca.cert_pem)


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_missing, "cloud.key is missing"),
        (_expired, "expired"),
        (_garbage, "not a PEM certificate"),
        (_other_ca, "not signed by the given CA"),
    ],
)
def test_refuses_without_a_valid_certificate_set(
    host: Host, spoil: Callable[[Host], None], problem: str
) -> None:
    spoil(host)
    before = snapshot(host.root, host.cert_dir)

    rc, out, err, _ = run_setup(host)

    assert rc == 1
    assert "refusing" in err and problem in err and str(host.cert_dir) in err
    assert "nothing was changed" in err
    assert snapshot(host.root, host.cert_dir) == before
    assert "PRIVATE KEY" not in out + err


def test_refuses_without_libvirtd_conf(host: Host) -> None:
    (host.root / LIBVIRTD_CONF).unlink()
    before = snapshot(host.root, host.cert_dir)
    rc, _, err, _ = run_setup(host)
    assert rc == 1
    assert "libvirtd.conf does not exist" in err
    assert snapshot(host.root, host.cert_dir) == before


# --- variants -------------------------------------------------------------------------------


def test_cloudstack_setup_agent_settings_are_changed_in_place(host: Host) -> None:
    # What cloudstack-setup-agent writes without -s (cloud_utils.py).
    with (host.root / LIBVIRTD_CONF).open("a") as fh:
        fh.write('listen_tcp=1\ntcp_port="16509"\nauth_tcp="none"\nlisten_tls=0  # no TLS\n')
    assert run_setup(host)[0] == 0
    lines = (host.root / LIBVIRTD_CONF).read_text().splitlines()
    assert "listen_tcp=0" in lines and "listen_tls=1  # no TLS" in lines
    assert 'auth_tcp="none"' in lines and 'tcp_port="16509"' in lines
    assert "listen_tls = 1" not in lines  # no second line after the stock comment
    assert lines[lines.index("listen_tcp=0") - 1] == setup_libvirtd.TCP_NOTE
    assert active_settings(host.root / LIBVIRTD_CONF)["listen_tls"] == ["1  # no TLS"]


def test_systemd_root_uses_socket_activation(host: Host) -> None:
    (host.root / "run/systemd/system").mkdir(parents=True)
    wants = host.root / "etc/systemd/system/sockets.target.wants"
    wants.mkdir(parents=True)
    (wants / "libvirtd-tcp.socket").symlink_to("/lib/systemd/system/libvirtd-tcp.socket")
    defaults = (host.root / DEFAULTS).read_bytes()

    rc, out, err, _ = run_setup(host)

    assert rc == 0, err
    assert "not run (--root is not /): systemctl enable --now libvirtd-tls.socket" in out
    assert "systemctl disable --now libvirtd-tcp.socket" in out
    assert "mask" not in out
    assert (host.root / DEFAULTS).read_bytes() == defaults  # no --listen with sockets


def test_systemd_root_with_masked_sockets_keeps_listen_mode(host: Host) -> None:
    (host.root / "run/systemd/system").mkdir(parents=True)
    units = host.root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in setup_libvirtd.SOCKETS:
        (units / unit).symlink_to("/dev/null")
    (host.root / DEFAULTS).write_text('LIBVIRTD_ARGS="--timeout 120 --verbose"\n')

    rc, out, err, _ = run_setup(host)

    assert rc == 0, err
    assert "systemctl" not in out.replace("systemctl restart libvirtd", "")
    assert active_settings(host.root / DEFAULTS)["LIBVIRTD_ARGS"] == ['"--verbose --listen"']


def test_cert_dir_defaults_to_cert_dir_property(host: Host, tmp_path: Path) -> None:
    config = tmp_path / "conf/agent.properties"
    config.parent.mkdir()
    config.write_text(PROPERTIES + f"cert.dir={host.cert_dir}\n")
    host.config = config
    parser = argparse.ArgumentParser()
    setup_libvirtd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["setup", "-s", "--root", str(host.root), "--config", str(config), "--firewall", "none"]
    )
    assert args.cert_dir is None
    assert setup_libvirtd.run(args) == 0
    assert Path(os.readlink(host.root / "etc/pki/CA/cacert.pem")) == host.cert_dir / "cloud.ca.crt"
    assert read_properties(config)["libvirtd.tls.enabled"] == "true"


def test_existing_regular_pki_file_is_kept_as_a_copy(host: Host) -> None:
    cacert = host.root / "etc/pki/CA/cacert.pem"
    cacert.parent.mkdir(parents=True)
    cacert.write_bytes(b"an older CA\n")
    assert run_setup(host)[0] == 0
    assert cacert.is_symlink()
    assert cacert.with_name("cacert.pem.kvm-agent.bak").read_bytes() == b"an older CA\n"


def test_explicit_firewall_on_a_fake_root_is_only_printed(host: Host) -> None:
    rc, out, _, _ = run_setup(host, "--firewall", "nftables")
    assert rc == 0
    assert (
        "not run (--root is not /): nft insert rule inet filter input tcp dport 16514 accept" in out
    )


def test_setup_without_s_is_a_usage_error(host: Host) -> None:
    parser = argparse.ArgumentParser()
    setup_libvirtd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["setup", "--root", str(host.root), "--config", str(host.config)])
    assert setup_libvirtd.run(args) == 2


# --- firewall detection on a live root (commands faked, dry run) --------------------------


UFW_ACTIVE = "Status: active\n\nTo                         Action      From\n"
NFT_CHAIN = "inet filter input"
FIREWALL_CASES = [
    ({"ufw status": UFW_ACTIVE + "22/tcp ALLOW Anywhere\n"}, "would run: ufw allow 16514/tcp"),
    ({"ufw status": UFW_ACTIVE + "16514/tcp   ALLOW   Anywhere\n"}, "(ufw): 16514/tcp is already"),
    (
        {
            "ufw status": "Status: inactive\n",
            f"nft list chain {NFT_CHAIN}": "chain input {\n\ttcp dport { 22, 16514 } accept\n}\n",
        },
        "(nftables): 16514/tcp is already open",
    ),
    (
        {f"nft list chain {NFT_CHAIN}": "chain input {\n\ttcp dport 165140 accept\n}\n"},
        f"would run: nft insert rule {NFT_CHAIN} tcp dport 16514 accept",
    ),
    ({}, "would run: iptables -I INPUT -p tcp -m tcp --dport 16514 -j ACCEPT"),
]


@pytest.mark.parametrize(("outputs", "expected"), FIREWALL_CASES)
def test_firewall_detection(
    monkeypatch: pytest.MonkeyPatch, outputs: dict[str, str], expected: str
) -> None:
    out = io.StringIO()
    setup = setup_libvirtd._Setup(root=Path("/"), dry_run=True, out=out)

    def query(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = " ".join(argv)
        found = cmd in outputs
        return subprocess.CompletedProcess(argv, 0 if found else 1, outputs.get(cmd, ""), "")

    monkeypatch.setattr(setup, "query", query)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    setup.open_firewall("auto")
    assert expected in out.getvalue()


# --- confedit -------------------------------------------------------------------------------


def test_confedit_rules() -> None:
    text = '# head\n  listen_tls   =  0 # keep\n#tls_port = "1"\n#tls_port = "16514"\nx = 1'
    new = confedit.set_values(
        text, {"listen_tls": "1", "tls_port": '"16514"', "auth_tls": '"none"'}, header="# H"
    )
    assert new == (
        '# head\n  listen_tls   =  1 # keep\n#tls_port = "1"\n#tls_port = "16514"\n'
        'tls_port = "16514"\nx = 1\n\n# H\nauth_tls = "none"\n'
    )
    assert confedit.set_values(new, {"listen_tls": "1", "auth_tls": '"none"'}) is new
    crlf = "#a = 1\r\nb = 2\r\n"
    assert confedit.set_values(crlf, {"a": "3", "b": "2"}) == "#a = 1\r\na = 3\r\nb = 2\r\n"
    assert confedit.set_values("", {"A": '"x"'}, separator="=", header="# H") == '# H\nA="x"\n'
    assert confedit.get_value('#k = 1\nk = "a b" # c\n', "k") == '"a b"'
    assert confedit.redact("+keystore.passphrase=abc") == "+keystore.passphrase=<redacted>"
    assert confedit.redact(' vnc_password = "x"') == " vnc_password = <redacted>"
    assert confedit.redact("+listen_tls = 1") == "+listen_tls = 1"
