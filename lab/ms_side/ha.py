"""The HA readers of a 4.21 management server: investigation and fencing.

Sources (CloudStack 4.21.0.0): ``plugins/hypervisors/kvm/src/main/java/com/cloud/ha/
KVMInvestigator.java`` ``isAgentAlive`` (and ``plugins/hypervisors/kvm/src/main/java/org/
apache/cloudstack/kvm/ha/KVMHostActivityChecker.java``, which reads the answer the same
way); ``server/src/main/java/com/cloud/ha/KVMFencer.java`` ``fenceOff``.
"""

from __future__ import annotations

from collections.abc import Sequence

from lab.ms_side.verdict import MsVerdict, class_cast, result_of
from protocol.messages.ha import FenceAnswer
from protocol.model import Message

UP, DOWN, DISCONNECTED = "Up", "Down", "Disconnected"


def check_on_host(answer: Message | None) -> MsVerdict:
    """One CheckOnHostCommand answer: ``answer.getResult() ? Down : Up``; the class is not
    looked at, so an Unsupported (result false) answer reads as 'Up'."""
    if answer is None:
        return MsVerdict(False, "no answer: no status from this host")
    status = DOWN if result_of(answer) else UP
    return MsVerdict(True, f"the suspect host is {status}", read={"status": status})


def investigate(suspect: Message | None, neighbours: Sequence[Message | None]) -> MsVerdict:
    """KVMInvestigator.isAgentAlive over the suspect's own answer and its Up neighbours' (in
    order; the first neighbour that says Up ends the loop). ``read["status"]`` is the
    status the MS gives the suspect: Down lets HA restart its VMs elsewhere; ``ok`` means the
    investigation reached Up or Down rather than Disconnected (undetermined)."""
    own = check_on_host(suspect).read.get("status", DISCONNECTED)
    neighbour = None
    for answer in neighbours:
        status = check_on_host(answer).read.get("status")
        if status is not None:
            neighbour = status
            if status == UP:
                break
    final = own
    if own in (DISCONNECTED, DOWN) and neighbour == UP:
        final = DISCONNECTED
    if own in (DISCONNECTED, DOWN) and neighbour == DOWN:
        final = DOWN
    return MsVerdict(
        final != DISCONNECTED,
        f"suspect says {own}, neighbours say {neighbour}: {final}",
        read={"status": final},
    )


def fence(answer: Message | None) -> MsVerdict:
    """KVMFencer.fenceOff, one Up host of the cluster: ``(FenceAnswer) send(...)``. A
    ClassCastException is not caught there: fencing stops with the exception, no other host
    is asked. No answer or result false: the next host is asked."""
    if answer is None:
        return MsVerdict(False, "no answer: the next Up host of the cluster is asked")
    if not isinstance(answer, FenceAnswer):
        return MsVerdict(False, f"{class_cast(answer, FenceAnswer)}: fenceOff throws")
    if not answer.result:
        return MsVerdict(False, f"not fenced ({answer.details}): the next host is asked")
    return MsVerdict(True, "fenced off: the VM may be restarted elsewhere")
