"""libvirt's migration failures, turned into answers an operator can act on.

The patterns are the texts libvirt 9 gives for each situation (measured in the lab; see
docs/operations.md). Each maps to what failed, where, and what to check.
"""

from __future__ import annotations

import re

from attrs import frozen


@frozen
class Diagnosis:
    summary: str  # what failed, for the operator
    check: str  # what to look at / run


def diagnose(message: str, *, vm: str, source: str, dest: str, uri: str) -> Diagnosis:
    text = message or ""
    low = text.lower()
    if "failed to verify peer's certificate" in low:
        return Diagnosis(
            f"the destination {dest} presented a libvirt certificate not signed by this cloud's CA",
            f"on {dest}: /etc/pki/libvirt/servercert.pem must be issued by the CA in "
            f"/etc/pki/CA/cacert.pem of {source} (re-provision the certificate of {dest})",
        )
    if "unable to read tls confirmation" in low:
        return Diagnosis(
            f"the destination {dest} rejected the client certificate of {source}",
            f"on {source}: /etc/pki/libvirt/clientcert.pem and private/clientkey.pem must "
            "exist and be issued by the cloud's CA",
        )
    if "failed validation against" in low:
        return Diagnosis(
            f"the client certificate of {source} does not verify against its own CA file",
            f"on {source}: /etc/pki/libvirt/clientcert.pem and /etc/pki/CA/cacert.pem must "
            "come from the same CA (re-provision this host's certificate)",
        )
    if (m := re.search(r"cannot read ca certificate '([^']+)'", text, re.I)) is not None:
        return Diagnosis(
            f"the CA certificate {m.group(1)} is missing on {source}",
            f"on {source}: provision certificates, then run `kvm-agent setup --secure-libvirtd`",
        )
    if (m := re.search(r"unable to access credentials (\S+?):?\s", text + " ", re.I)) is not None:
        return Diagnosis(
            f"QEMU's TLS credentials ({m.group(1)}) are missing on the destination {dest}",
            f"on {dest}: /etc/pki/qemu/ must hold ca-cert.pem, server-cert.pem, "
            f"server-key.pem: run `kvm-agent setup --secure-libvirtd` on {dest} (it also "
            "works on a host run by CloudStack's Java agent: it needs only cloud.crt, "
            "cloud.key and cloud.ca.crt), or set migration.native.tls=preferred on "
            f"{source} to migrate with libvirt's TLS control channel only",
        )
    if "cannot write to tls channel" in low or "cannot read from tls channel" in low:
        return Diagnosis(
            "QEMU's native TLS channel to the destination failed",
            f"on {source}: /etc/pki/qemu/client-cert.pem and client-key.pem; on {dest}: "
            "/etc/pki/qemu/server-cert.pem, both from the cloud's CA",
        )
    if "unable to connect to server" in low or "connection refused" in low:
        # The Java agent's wording, which operators know.
        return Diagnosis(
            f"Migration was refused connection to destination: {uri}",
            "Please check libvirt configuration compatibility and firewall rules on the "
            f"source and destination hosts (libvirtd on {dest} must listen on "
            f"{'16514' if uri.startswith('qemu+tls') else '16509'}/tcp)",
        )
    if "no route to host" in low or "timed out" in low:
        return Diagnosis(
            f"the destination {dest} cannot be reached",
            f"check the network path from {source} to {dest} and the firewall",
        )
    if "client socket is closed" in low or "end of file while reading data" in low:
        return Diagnosis(
            "the libvirtd connection broke during the migration",
            f"check that libvirtd is running on {source} and {dest} (journalctl -u libvirtd)",
        )
    return Diagnosis(f"libvirt failed: {text}", f"see the libvirtd logs on {source} and {dest}")
