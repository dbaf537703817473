from __future__ import annotations

import os
import ssl

import pytest
import trustme
from hypothesis import HealthCheck, settings

from tests.conftest_lab import lab  # noqa: F401  (the session's two-host lab)

# CI fuzzes every decoder with at least 10,000 examples; local runs stay quick.
settings.register_profile(
    "ci", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="test ms ca")


@pytest.fixture(scope="session")
def other_ca() -> trustme.CA:
    return trustme.CA(organization_name="another ca")


def tls12_server_context(ca: trustme.CA, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A management-server context as the Java MS has it: TLS 1.2 only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert("ms.test", "127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(ca: trustme.CA, trust: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    (trust or ca).configure_trust(ctx)
    ca.issue_cert("agent.test", "127.0.0.1").configure_cert(ctx)
    return ctx
