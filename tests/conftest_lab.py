"""The two-host lab (lab/hosts.py) for tests marked ``lab``: built once per session.

``tests/conftest.py`` imports the fixture from here so that every test module shares the
one lab. The workdir is stable across runs (``$KVMLAB_DIR``, default
``/var/tmp/kvm-agent-lab``): QEMU's capability probe (~8 s) is paid once per machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.ca import LabCA
from lab.hosts import DEFAULT_WORKDIR, Lab, lab_unavailable

LAB_DIR = DEFAULT_WORKDIR


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
