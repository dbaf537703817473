"""The key pair a management server hands to its hosts (ModifySshKeysCommand).

A real MS generates it once, at its first start, into the global settings
``ssh.publickey`` / ``ssh.privatekey`` (RSA, the public key in OpenSSH form); hosts use it
to reach the system VMs. The lab keeps one per state directory.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.fsutil import atomic_write
from lab.ms.zone import Zone

KEY_FILE = "id_rsa"
PUBLIC_FILE = "id_rsa.pub"


def load_or_create(directory: Path) -> tuple[str, str]:
    """(public key, private key PEM), made on first use; the private key is 0600."""
    private_path, public_path = directory / KEY_FILE, directory / PUBLIC_FILE
    if not (private_path.exists() and public_path.exists()):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        atomic_write(private_path, private, mode=0o600)
        atomic_write(public_path, public + b" cloud@lab-ms\n", mode=0o644)
    return public_path.read_text(), private_path.read_text()


def with_keys(zone: Zone, directory: Path) -> Zone:
    public, private = load_or_create(directory)
    return attrs.evolve(zone, ssh_public_key=public, ssh_private_key=private)
