"""Certificate provisioning over the agent connection (org.apache.cloudstack.ca)."""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from protocol.model import Answer, Command, jfield

_CA = "org.apache.cloudstack.ca."


@frozen
class NetworkElementCommand(Command):
    """The Java superclass of both commands; not sent on its own."""

    JAVA_CLASS: ClassVar[str] = "com.cloud.agent.api.routing.NetworkElementCommand"

    access_details: dict[str, str] = jfield("accessDetails", factory=dict)
    router_access_ip: str | None = jfield("routerAccessIp", default=None)


@frozen
class SetupKeyStoreCommand(NetworkElementCommand):
    JAVA_CLASS: ClassVar[str] = _CA + "SetupKeyStoreCommand"

    validity_days: int = jfield("validityDays", default=365)
    keystore_password: str | None = jfield("keystorePassword", default=None, secret=True)
    handle_by_agent: bool = jfield("handleByAgent", default=True)


@frozen
class SetupCertificateAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _CA + "SetupCertificateAnswer"


@frozen
class SetupKeystoreAnswer(SetupCertificateAnswer):
    JAVA_CLASS: ClassVar[str] = _CA + "SetupKeystoreAnswer"

    csr: str | None = jfield("csr", default=None)


@frozen
class SetupCertificateCommand(NetworkElementCommand):
    JAVA_CLASS: ClassVar[str] = _CA + "SetupCertificateCommand"

    certificate: str | None = jfield("certificate", default=None)
    private_key: str | None = jfield("privateKey", default=None, secret=True)
    ca_certificates: str | None = jfield("caCertificates", default=None)
    handle_by_agent: bool = jfield("handleByAgent", default=True)
