"""The two-host lab (lab/hosts.py) for tests marked ``lab``: built once per session.

``tests/conftest.py`` imports the fixture from here so that every test module shares the
one lab. The workdir is stable across runs (``$KVMLAB_DIR``, default
``/var/tmp/kvm-agent-lab``): QEMU's capability probe (~8 s) is paid once per machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.hosts import DEFAULT_WORKDIR, Lab, lab_unavailable

LAB_DIR = DEFAULT_WORKDIR


def lab_required() -> bool:
    """In CI (``CI=true``) or on request (``KVMLAB_REQUIRED=1``) a lab test that cannot run
    fails: a run that skipped them all must not pass as a green run."""
    flags = (os.environ.get("CI", ""), os.environ.get("KVMLAB_REQUIRED", ""))
    return any(v.strip().lower() in ("1", "true", "yes") for v in flags)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        if lab_required():
            pytest.fail(f"the lab is required here (CI or KVMLAB_REQUIRED) but: {reason}")
        pytest.skip(reason)
    built = Lab.create(LAB_DIR, ca=LabCA.load_or_create(LAB_DIR / LAB_CA_DIRNAME))
    try:
        yield built
    finally:
        built.teardown()
