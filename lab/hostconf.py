"""What a lab host is on disk: its copies of the bound paths, its certificates, its mounts.

A host's tree (``<root>/fs/...``) holds its own ``/etc/libvirt`` (the package defaults with
the lab's ``libvirtd.conf`` and ``qemu.conf``), ``/etc/pki`` (links to its certificate
directory, as CloudStack makes them, and QEMU's DH parameters, as the agent writes them),
``/etc/hosts``, ``/etc/hostname`` and empty ``/var/{lib,log,cache}/libvirt``;
:func:`mount_script` binds them over the real paths inside the host's mount namespace, and
the machine's directories that every host shares (the primary pool, :mod:`lab.storage`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agent.certs.dhparams import ensure_dh_params
from lab.ca import LabCA
from lab.netns import NS_DIR

CA_FILE: Final = "cloud.ca.crt"
CERT_FILE: Final = "cloud.crt"
KEY_FILE: Final = "cloud.key"
# certificates.md §1: what libvirt and QEMU read, linked to the agent's files as CloudStack does.
PKI_LINKS: Final = {
    "CA/cacert.pem": CA_FILE,
    "libvirt/servercert.pem": CERT_FILE,
    "libvirt/clientcert.pem": CERT_FILE,
    "libvirt/private/serverkey.pem": KEY_FILE,
    "libvirt/private/clientkey.pem": KEY_FILE,
    "qemu/ca-cert.pem": CA_FILE,
    "qemu/server-cert.pem": CERT_FILE,
    "qemu/server-key.pem": KEY_FILE,
    "qemu/client-cert.pem": CERT_FILE,
    "qemu/client-key.pem": KEY_FILE,
}
# The paths each host has its own copy of.
BOUND: Final = (
    "/etc/libvirt",
    "/etc/pki",
    "/etc/hosts",
    "/etc/hostname",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)


def libvirtd_conf(ip: str, host_uuid: uuid.UUID, tls: bool) -> str:
    # auth "none" everywhere: the lab's sockets are reachable only from its namespaces.
    return f"""# Written by lab/hostconf.py.
listen_tls = {int(tls)}
listen_tcp = 1
listen_addr = "{ip}"
auth_tcp = "none"
auth_tls = "none"
auth_unix_rw = "none"
host_uuid = "{host_uuid}"
keepalive_interval = 5
key_file = "/etc/pki/libvirt/private/serverkey.pem"
cert_file = "/etc/pki/libvirt/servercert.pem"
ca_file = "/etc/pki/CA/cacert.pem"
"""


def qemu_conf(ip: str, tls: bool) -> str:
    # libvirt refuses to start if the native-TLS directory is named but missing.
    native_tls = (
        'default_tls_x509_cert_dir = "/etc/pki/qemu"\ndefault_tls_x509_verify = 1\n' if tls else ""
    )
    return f"""# Written by lab/hostconf.py.
# root: /dev/kvm is root-only on the lab machine.
user = "root"
group = "root"
dynamic_ownership = 0
cgroup_controllers = [ ]
# No AppArmor/SELinux profiles: they know nothing of the lab's bind mounts.
security_driver = "none"
migration_address = "{ip}"
migration_host = "{ip}"
{native_tls}"""


def issue_rsa(ca: LabCA, name: str, sans: Sequence[str]) -> tuple[bytes, bytes]:
    """An RSA key and its certificate from ``ca``, the way a CloudStack host gets them:
    a CSR signed by the MS's root CA, which adds the host's addresses as SANs.

    The certificate has no keyUsage or extendedKeyUsage at all, as CloudStack's. GnuTLS
    (libvirt, QEMU) checks a key usage only when the extension is present; a keyUsage
    without keyEncipherment is what it refuses ("usage does not permit key encipherment").
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    cert_pem = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), extra_sans=sans)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert_pem


def write_certificates(cert_dir: Path, pki: Path, ca: LabCA, name: str, ip: str) -> None:
    """The agent's three files in ``cert_dir`` (key 0600), and ``pki`` (the host's
    ``/etc/pki``) linked to them."""
    key_pem, cert_pem = issue_rsa(ca, name, sans=(ip, name))
    (cert_dir / CA_FILE).write_bytes(ca.cert_pem)
    (cert_dir / CERT_FILE).write_bytes(cert_pem)
    fd = os.open(cert_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    for link, target in PKI_LINKS.items():
        (pki / link).parent.mkdir(parents=True, exist_ok=True)
        (pki / link).symlink_to(cert_dir / target)


def write_tree(
    fs: Path,
    cert_dir: Path,
    *,
    name: str,
    ip: str,
    peers: Mapping[str, str],
    ca: LabCA,
    tls: bool,
) -> None:
    """A fresh tree for the host; with ``tls=False`` no certificate and an empty /etc/pki."""
    etc_libvirt = fs / "etc/libvirt"
    # The package defaults, without domains, networks (the default one needs dnsmasq)
    # or pools: nothing of the machine's own libvirt state.
    shutil.copytree(
        "/etc/libvirt",
        etc_libvirt,
        symlinks=True,
        ignore=lambda d, _: ["qemu", "storage", "secrets"] if d == "/etc/libvirt" else [],
    )
    (etc_libvirt / "qemu").mkdir()
    # Distinct per host: libvirt refuses to migrate to a host with its own UUID.
    host_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"kvmlab:{name}")
    (etc_libvirt / "libvirtd.conf").write_text(libvirtd_conf(ip, host_uuid, tls))
    (etc_libvirt / "qemu.conf").write_text(qemu_conf(ip, tls))
    # images: the host's own, unshared disks (lab.storage.LOCAL_IMAGES).
    for d in (
        "var/lib/libvirt/qemu",
        "var/lib/libvirt/images",
        "var/log/libvirt/qemu",
        "var/cache/libvirt/qemu",
    ):
        (fs / d).mkdir(parents=True)
    hosts = "".join(f"{peer_ip}\t{peer}\n" for peer, peer_ip in peers.items())
    (fs / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{hosts}")
    (fs / "etc/hostname").write_text(f"{name}\n")
    (fs / "etc/pki").mkdir()
    cert_dir.mkdir()
    if tls:
        write_certificates(cert_dir, fs / "etc/pki", ca, name, ip)
        ensure_dh_params(fs)  # as the agent does: QEMU never generates its own


def mount_script(fs: Path, name: str, shared: Mapping[str, Path] | None = None) -> str:
    """Shell commands run inside the new mount and UTS namespaces; ``shared`` maps paths
    inside the host to the machine's directories bound there (the mount points exist)."""
    q = shlex.quote
    lines = [
        # Drop this namespace's copies of the machine's namespace files: they would keep
        # the other host's namespaces alive.
        f"umount --lazy {q(str(NS_DIR))} 2>/dev/null || true",
        "umount --lazy /run/netns 2>/dev/null || true",
        "mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m kvmlab-run /run",
        "mkdir -p /run/libvirt /run/lock",
        # A sysfs of the host's own network namespace (this script runs in it): its
        # /sys/class/net and /sys/devices/virtual/net/<bridge>/brif, which CloudStack's
        # network checks read, are the host's, not the machine's. The cgroup tree moves over.
        "cg=/run/kvmlab-cgroup; mkdir $cg",
        "if mountpoint -q /sys/fs/cgroup; then mount --rbind /sys/fs/cgroup $cg; fi",
        "mount -t sysfs kvmlab-sys /sys",
        "if mountpoint -q $cg; then mount --move $cg /sys/fs/cgroup; fi",
        "rmdir $cg",
    ]
    lines += [f"mount --bind {q(str(fs / p.lstrip('/')))} {q(p)}" for p in BOUND]
    lines += [f"mount --bind {q(str(src))} {q(p)}" for p, src in (shared or {}).items()]
    lines.append(f"hostname {q(name)}")
    return "\n".join(lines)
