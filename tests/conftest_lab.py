"""The two-host lab (lab/hosts.py) for tests marked ``lab``: built once per session.

``tests/conftest.py`` imports the fixture from here so that every test module shares the
one lab. The workdir is stable across runs (``$KVMLAB_DIR``, default
``/var/tmp/kvm-agent-lab``): QEMU's capability probe (~8 s) is paid once per machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.ca import LabCA
from lab.hosts import Lab
from lab.netns import env

LAB_DIR = Path(os.environ.get("KVMLAB_DIR", "/var/tmp/kvm-agent-lab"))
_TOOLS = (
    "libvirtd",
    "virtlogd",
    "virsh",
    "qemu-system-x86_64",
    "tcpdump",
    "nsenter",
    "unshare",
    "ip",
    "as",
    "ld",
)


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None. TCG needs no /dev/kvm."""
    if os.geteuid() != 0:
        return "the two-host lab needs root"
    path = env()["PATH"]
    missing = [tool for tool in _TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        return f"the two-host lab needs {', '.join(missing)} (see scripts/bootstrap.sh)"
    return None


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    built = Lab.create(LAB_DIR, ca=LabCA.load_or_create(LAB_DIR / "ca"))
    try:
        yield built
    finally:
        built.teardown()
