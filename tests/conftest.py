from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from agent.certs.trust import client_context as agent_client_context
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.pools import Pools
from lab.ca import LabCA
from tests.cert_env import cloudstack_ca
from tests.conftest_lab import lab  # noqa: F401  (the session's two-host lab)

# CI fuzzes every decoder with at least 10,000 examples; local runs stay quick.
settings.register_profile(
    "ci", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    """A management server's CA made the way CloudStack makes it (keyCertSign|cRLSign)."""
    return cloudstack_ca(tmp_path_factory.mktemp("ms-ca"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    """Another CloudStack CA: the same subject, another key."""
    return LabCA.create(tmp_path_factory.mktemp("other-ca"))


def tls12_server_context(ca: LabCA, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A management-server context as the Java MS has it: TLS 1.2 only, the CA
    certificate itself as the server certificate."""
    return ca.server_context(require_client_cert=require_client_cert)


def client_context(
    ca: LabCA, trust: LabCA | None = None, *, with_client_cert: bool = True
) -> ssl.SSLContext:
    """The agent's own context (agent.certs.trust) for a cert.dir with ``trust`` (default: ``ca``)
    as cloud.ca.crt and, optionally, a host certificate of ``ca``."""
    with tempfile.TemporaryDirectory(prefix="agent-certs-") as tmp:
        cert_dir = Path(tmp)
        if with_client_cert:
            ca.write_agent_set(cert_dir, "agent.test", sans=("127.0.0.1",))
        (cert_dir / "cloud.ca.crt").write_bytes((trust or ca).cert_pem)
        return agent_client_context(cert_dir).context


@pytest.fixture
async def pools() -> AsyncIterator[Pools]:
    """Pools on libvirt's test driver (no daemon)."""
    hv = Hypervisor("test:///default")
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        yield Pools(hv)
        nursery.cancel_scope.cancel()
