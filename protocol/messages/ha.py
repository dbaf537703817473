"""HA: is a suspect host dead, and may its VMs be restarted elsewhere (CloudStack 4.21).

Java classes in ``core/src/main/java/com/cloud/agent/api/`` (HostTO in
``api/src/main/java/com/cloud/agent/api/to/``). Answers the MS expects:

* CheckOnHostCommand -> CheckOnHostAnswer; KVMInvestigator and KVMHostActivityChecker read
  ``result`` only: **true means "the suspect host is Down"**.
* FenceCommand -> **FenceAnswer** (KVMFencer casts to it; ``result`` true = fenced off).
"""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from protocol.messages.to import HostTO
from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."


@frozen
class CheckOnHostCommand(Command):
    """Sent to the suspect and to its Up neighbours; the heartbeat file is looked up by
    ``host.privateNetwork.ip``."""

    JAVA_CLASS: ClassVar[str] = _API + "CheckOnHostCommand"
    MS_WAIT: ClassVar[int] = 20  # set by the Java constructors the MS uses

    host: HostTO | None = jfield("host", default=None)
    report_check_failure_if_one_storage_is_down: bool = jfield(
        "reportCheckFailureIfOneStorageIsDown", default=False
    )


@frozen
class CheckOnHostAnswer(Answer):
    """Java's (cmd, alive, details) constructor: result true, determined = alive is known."""

    JAVA_CLASS: ClassVar[str] = _API + "CheckOnHostAnswer"

    determined: bool = jfield("determined", default=False)
    alive: bool = jfield("alive", default=False)


@frozen
class FenceCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "FenceCommand"

    vm_name: str | None = jfield("vmName", default=None)
    host_guid: str | None = jfield("hostGuid", default=None)
    host_ip: str | None = jfield("hostIp", default=None)  # private IP of the host to fence
    in_seq: bool = jfield("inSeq", default=False)
    host: HostTO | None = jfield("host", default=None)
    report_check_failure_if_one_storage_is_down: bool = jfield(
        "reportCheckFailureIfOneStorageIsDown", default=False
    )

    def executes_in_sequence(self) -> bool:
        return self.in_seq


@frozen
class FenceAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "FenceAnswer"
