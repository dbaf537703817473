"""Volumes made by the MS on the two-host lab: the lab MS (its zone attaches the shared
SharedMountPoint pool at connect) sends CopyCommand (the bootable template on the pool ->
a volume), CreateObjectCommand and DeleteCommand to host A's agent; the files appear in the
pool of both hosts at the same path. Every answer is judged by lab.ms_side as a 4.21 MS
reads it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import trio

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud
from lab.cloudvm import clone_to, shared_volume
from lab.hosts import Lab, LabHost
from lab.ms_side import verdict_for
from lab.storage import SHARED_POOL_PATH, SHARED_POOL_UUID, TEMPLATE_UUID
from protocol.messages.enums import VolumeType
from protocol.messages.volumes import (
    CopyCmdAnswer,
    CreateObjectAnswer,
    CreateObjectCommand,
    DeleteCommand,
)
from tests.conftest_lab import LAB_DIR

pytestmark = pytest.mark.lab
MIB = 1 << 20


@pytest.fixture(scope="module")
def cloud(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    c = LabCloud(lab, tmp_path_factory.mktemp("volumes"), LabCA.load(LAB_DIR / LAB_CA_DIRNAME))
    try:
        c.start_ms("ms1", "a")
        c.start_agent("a")
        c.start_agent("b")
        yield c
    finally:
        c.close()
        for host in lab.hosts.values():
            host.run(
                ["virsh", "-c", "qemu:///system", "pool-destroy", SHARED_POOL_UUID],
                check=False,
                capture_output=True,
            )


def listed(host: LabHost, name: str) -> str:
    host.virsh("pool-refresh", SHARED_POOL_UUID)
    return host.virsh("vol-path", "--pool", SHARED_POOL_UUID, name)


async def test_the_ms_clones_creates_and_deletes_volumes_on_the_shared_pool(
    cloud: LabCloud, lab: Lab
) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    for name in ("a", "b"):
        await cloud.wait_host(name, timeout=90)
    template = await trio.to_thread.run_sync(lab.place_template)
    tmpl_size = json.loads(a.check(["qemu-img", "info", "--output=json", "-U", template]))[
        "virtual-size"
    ]

    # 1. The clone: the template on the pool -> a ROOT volume, on host A.
    root = str(uuid.uuid4())
    clone = clone_to(shared_volume(root, VolumeType.ROOT, 64 * MIB, number=7))
    answer = await cloud.ask("a", clone)
    assert isinstance(answer, CopyCmdAnswer)
    verdict = verdict_for(clone, answer)
    assert verdict.ok, (verdict.reason, answer)
    assert verdict.read == {"path": root, "size": max(64 * MIB, tmpl_size), "format": "QCOW2"}
    # In the pool of both hosts, at the same path; an overlay of the template.
    for host in (a, b):
        assert listed(host, root) == f"{SHARED_POOL_PATH}/{root}"
        info = json.loads(
            host.check(["qemu-img", "info", "--output=json", "-U", listed(host, root)])
        )
        assert info["format"] == "qcow2"
        assert info["backing-filename"] == template == f"{SHARED_POOL_PATH}/{TEMPLATE_UUID}"
        assert info["virtual-size"] == max(64 * MIB, tmpl_size)
    # The same clone again: the volume is there, it is not overwritten.
    again = await cloud.ask("a", clone)
    assert isinstance(again, CopyCmdAnswer) and not verdict_for(clone, again).ok
    assert "already exists" in (again.details or "")

    # 2. An empty DATADISK, on host B this time (any host attached to the pool).
    data = str(uuid.uuid4())
    create = CreateObjectCommand(data=shared_volume(data, VolumeType.DATADISK, 32 * MIB, number=7))
    made = await cloud.ask("b", create)
    assert isinstance(made, CreateObjectAnswer)
    verdict = verdict_for(create, made)
    assert verdict.ok, verdict.reason
    assert verdict.read == {"path": data, "size": 32 * MIB, "format": "QCOW2"}
    info = json.loads(a.check(["qemu-img", "info", "--output=json", "-U", listed(a, data)]))
    assert (info["format"], info["virtual-size"]) == ("qcow2", 32 * MIB)
    assert "backing-filename" not in info

    # 3. Delete both (from A); a second delete of one is no failure (as the Java agent).
    for vol in (root, data):
        delete = DeleteCommand(data=shared_volume(vol, VolumeType.ROOT, MIB, path=vol, number=7))
        gone = await cloud.ask("a", delete)
        assert verdict_for(delete, gone).ok
        assert b.run(["test", "-e", f"{SHARED_POOL_PATH}/{vol}"]).returncode == 1
    again_gone = await cloud.ask("b", delete)
    assert verdict_for(delete, again_gone).ok
    for host in (a, b):
        host.virsh("pool-refresh", SHARED_POOL_UUID)
        names = host.virsh("vol-list", "--pool", SHARED_POOL_UUID)
        assert root not in names and data not in names
