"""Volumes on file pools: CopyCommand (clone of a template on primary), CreateObjectCommand,
DeleteCommand, through the handlers, on libvirt's test driver (the pool: a temporary
directory) with the real qemu-img. Commands arrive as a 4.21 MS writes them (Gson JSON,
decoded by the codec); every answer goes back through the codec and is judged by lab.ms_side
as the 4.21 MS reads it. The secondary-storage copy is in tests/test_secondary.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from attrs import frozen

from agent.config import AgentConfig
from agent.handlers import volumes as handlers
from agent.hypervisor.pooldefs import PoolKind, dir_pool
from agent.hypervisor.pools import Pools
from agent.hypervisor.qemuimg import QemuImg
from agent.hypervisor.volumes import VolumeError, Volumes, file_name
from lab.ms_side import verdict_for
from protocol.codec import decode_array, encode_messages
from protocol.messages.data_to import VolumeObjectTO
from protocol.messages.volumes import CopyCmdAnswer, CreateObjectAnswer
from protocol.model import Answer, Command, Message

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img")

MIB = 1 << 20
TO = "org.apache.cloudstack.storage.to."


@frozen
class Ctx:
    """What the volume handlers use (VolumesContext): real services."""

    config: AgentConfig
    volumes: Volumes


def config(**keys: str) -> AgentConfig:
    return AgentConfig.from_properties({"guid": "vol-test", **keys})


@frozen
class Pool:
    uuid: str
    dir: Path
    volumes: Volumes


@pytest.fixture
async def pool(pools: Pools, tmp_path: Path) -> Pool:
    directory = tmp_path / "primary"
    directory.mkdir()
    spec = dir_pool(str(uuid.uuid4()), str(directory), PoolKind.SHARED_MOUNT_POINT)
    await pools.add(spec)
    return Pool(spec.uuid, directory, Volumes(pools))


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def info(path: Path) -> dict[str, Any]:
    return json.loads(qemu_img("info", "-U", "--output=json", str(path)))  # type: ignore[no-any-return]


def template(pool: Pool, size: int = 16 * MIB, fmt: str = "qcow2") -> str:
    name = str(uuid.uuid4())
    qemu_img("create", "-q", "-f", fmt, str(pool.dir / name), str(size))
    return name


def store(
    pool: Pool, pool_type: str = "SharedMountPoint", uuid_: str | None = None
) -> dict[str, Any]:
    """A PrimaryDataStoreTO as a 4.21 MS writes it (wrapped)."""
    u = uuid_ or pool.uuid
    return {
        TO + "PrimaryDataStoreTO": {
            "uuid": u,
            "name": "primary",
            "id": 1,
            "poolType": pool_type,
            "host": "localhost",
            "path": str(pool.dir),
            "port": 0,
            "url": f"{pool_type}://localhost{pool.dir}/?ROLE=Primary&STOREUUID={u}",
            "details": {},
            "isManaged": False,
        }
    }


def volume_to(pool: Pool, vol: str, size: int, **more: Any) -> dict[str, Any]:
    fields = {
        "uuid": vol,
        "volumeType": "ROOT",
        "dataStore": more.pop("dataStore", store(pool)),
        "name": "ROOT-20",
        "size": size,
        "volumeId": 31,
        "vmName": "i-2-20-VM",
        "accountId": 2,
        "format": "QCOW2",
        "provisioningType": "THIN",
        "poolId": 1,
        "id": 31,
        "deviceId": 0,
        "hypervisorType": "KVM",
        "directDownload": False,
        "deployAsIs": False,
        "followRedirects": False,
        "someFieldOfALaterRelease": {"x": 1},  # ignored
    }
    fields.update(more)
    return {TO + "VolumeObjectTO": fields}


def clone_json(pool: Pool, tmpl: str, vol: str, size: int, **more: Any) -> dict[str, Any]:
    src = {
        TO + "TemplateObjectTO": {
            "path": tmpl,
            "uuid": str(uuid.uuid4()),
            "id": 201,
            "format": "QCOW2",
            "accountId": 2,
            "hvm": True,
            "imageDataStore": store(pool),
            "name": "201-2-tmpl",
            "size": 16 * MIB,
            "hypervisorType": "KVM",
            "bootable": False,
            "directDownload": False,
            "deployAsIs": False,
            "followRedirects": False,
        }
    }
    return {
        "org.apache.cloudstack.storage.command.CopyCommand": {
            "srcTO": src,
            "destTO": volume_to(pool, vol, size, **more),
            "executeInSequence": False,
            "options": {},
            "options2": {},
            "contextMap": {},
            "wait": 0,
            "bypassHostMaintenance": False,
        }
    }


def wire(raw: dict[str, Any]) -> Command:
    (cmd,) = decode_array([raw])
    assert isinstance(cmd, Command)
    return cmd


def back(answer: Message) -> Message:
    """The answer as the MS decodes it."""
    (decoded,) = decode_array(json.loads(encode_messages([answer])))
    return decoded


async def run(cmd: Command, ctx: Ctx) -> Message:
    fn = {
        "CopyCommand": handlers.copy,
        "CreateObjectCommand": handlers.create_object,
        "DeleteCommand": handlers.delete,
    }[type(cmd).__name__]
    return back(await fn(cmd, ctx))  # type: ignore[operator]


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --- clone: a template on primary -> a volume --------------------------------------------


async def test_a_clone_is_a_qcow2_overlay_of_the_template_answered_as_the_ms_reads_it(
    pool: Pool,
) -> None:
    tmpl = template(pool)
    vol = str(uuid.uuid4())
    cmd = wire(clone_json(pool, tmpl, vol, 64 * MIB))
    answer = await run(cmd, Ctx(config(), pool.volumes))
    verdict = verdict_for(cmd, answer)
    assert verdict.ok, verdict.reason
    assert verdict.read == {"path": vol, "size": 64 * MIB, "format": "QCOW2"}
    assert isinstance(answer, CopyCmdAnswer) and isinstance(answer.new_data, VolumeObjectTO)
    made = info(pool.dir / vol)
    assert made["format"] == "qcow2" and made["virtual-size"] == 64 * MIB
    # The backing file by its absolute path: the same on every host of the cluster.
    assert made["backing-filename"] == str(pool.dir / tmpl)
    assert made["backing-filename-format"] == "qcow2"
    assert files(pool.dir) == {tmpl, vol}  # nothing else (no temporary file)


async def test_a_clone_smaller_than_its_template_takes_the_template_size(pool: Pool) -> None:
    tmpl = template(pool, 32 * MIB)
    vol = str(uuid.uuid4())
    cmd = wire(clone_json(pool, tmpl, vol, 8 * MIB))
    answer = await run(cmd, Ctx(config(), pool.volumes))
    assert verdict_for(cmd, answer).read["size"] == 32 * MIB
    assert info(pool.dir / vol)["virtual-size"] == 32 * MIB


async def test_a_raw_template_backs_a_qcow2_volume_and_fat_is_a_full_copy(pool: Pool) -> None:
    tmpl = template(pool, 16 * MIB, fmt="raw")
    thin, fat = str(uuid.uuid4()), str(uuid.uuid4())
    ctx = Ctx(config(), pool.volumes)
    cmd = wire(clone_json(pool, tmpl, thin, 16 * MIB))
    assert verdict_for(cmd, await run(cmd, ctx)).ok
    assert info(pool.dir / thin)["backing-filename-format"] == "raw"
    cmd = wire(clone_json(pool, tmpl, fat, 24 * MIB, provisioningType="FAT"))
    answer = await run(cmd, ctx)
    assert verdict_for(cmd, answer).ok
    made = info(pool.dir / fat)
    assert "backing-filename" not in made and made["format"] == "qcow2"
    assert made["virtual-size"] == 24 * MIB
    assert made["actual-size"] >= 16 * MIB  # preallocated (preallocation=full)


async def test_a_missing_template_asks_the_ms_to_reload_it_and_leaves_nothing(
    pool: Pool,
) -> None:
    vol = str(uuid.uuid4())
    cmd = wire(clone_json(pool, "no-such-template", vol, 8 * MIB))
    answer = await run(cmd, Ctx(config(), pool.volumes))
    assert isinstance(answer, CopyCmdAnswer) and not answer.result
    assert "request template reload" in (answer.details or "")
    assert "no-such-template" in (answer.details or "")
    assert "template_spool_ref reset" in verdict_for(cmd, answer).reason
    assert files(pool.dir) == set()


async def test_an_unknown_pool_or_an_unserved_pool_type_fails_with_a_reason(
    pool: Pool,
) -> None:
    tmpl = template(pool)
    ctx = Ctx(config(), pool.volumes)
    elsewhere = str(uuid.uuid4())
    cmd = wire(
        clone_json(pool, tmpl, str(uuid.uuid4()), MIB, dataStore=store(pool, uuid_=elsewhere))
    )
    answer = await run(cmd, ctx)
    verdict = verdict_for(cmd, answer)
    assert not verdict.ok and isinstance(answer, CopyCmdAnswer)
    assert f"storage pool {elsewhere} is not set up on this host" in (answer.details or "")
    assert "ModifyStoragePoolCommand" in (answer.details or "")
    rbd = wire(clone_json(pool, tmpl, str(uuid.uuid4()), MIB, dataStore=store(pool, "RBD")))
    answer = await run(rbd, ctx)
    assert isinstance(answer, CopyCmdAnswer) and not answer.result
    assert "of type RBD, which this agent does not serve" in (answer.details or "")
    assert files(pool.dir) == {tmpl}


async def test_an_existing_volume_is_never_overwritten(pool: Pool) -> None:
    tmpl = template(pool)
    vol = str(uuid.uuid4())
    (pool.dir / vol).write_bytes(b"the data of another volume")
    cmd = wire(clone_json(pool, tmpl, vol, MIB))
    answer = await run(cmd, Ctx(config(), pool.volumes))
    assert not verdict_for(cmd, answer).ok
    assert "already exists" in (getattr(answer, "details", "") or "")
    assert (pool.dir / vol).read_bytes() == b"the data of another volume"


async def test_a_qemu_img_failure_leaves_no_partial_volume(pool: Pool) -> None:
    # SPARSE is a full copy (convert), then a resize to the requested size: 4 EiB is more
    # than qcow2 can address, so the real qemu-img fails after the copy was written.
    tmpl = template(pool)
    vol = str(uuid.uuid4())
    cmd = wire(clone_json(pool, tmpl, vol, 1 << 62, provisioningType="SPARSE"))
    answer = await run(cmd, Ctx(config(), pool.volumes))
    assert isinstance(answer, CopyCmdAnswer) and not answer.result
    details = answer.details or ""
    assert "qemu-img resize failed" in details and "File too large" in details, details
    assert vol in details
    assert files(pool.dir) == {tmpl}


async def test_qemu_img_is_killed_at_its_time_out_and_its_file_removed(
    pools: Pools, pool: Pool, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # Virtual time: the 30 s time-out passes once everything has waited 1 s of real time
    # (on the hung process; the real qemu-img info before it takes milliseconds).
    mock_clock.autojump_threshold = 1.0
    # A qemu-img that writes its output and hangs (storage that stopped answering).
    pidfile, written = tmp_path / "pid", tmp_path / "written"
    fake = tmp_path / "qemu-img"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in info) exec qemu-img "$@";; esac\n'
        'for a; do case "$a" in *.part) out="$a";; esac; done\n'
        f'echo partial > "$out"; echo "$out" > {written}; echo $$ > {pidfile}; exec sleep 600\n'
    )
    fake.chmod(0o755)
    volumes = Volumes(pools, QemuImg(str(fake)))
    tmpl = template(pool)
    cmd = wire(clone_json(pool, tmpl, str(uuid.uuid4()), MIB))
    answer = await run(cmd, Ctx(config(**{"qemuimg.timeout": "30"}), volumes))
    assert isinstance(answer, CopyCmdAnswer) and not answer.result
    assert "did not finish within 30s and was killed" in (answer.details or "")
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    partial = Path(written.read_text().strip())
    assert partial.parent == pool.dir and partial.name.startswith(".")  # it was written...
    assert files(pool.dir) == {tmpl}  # ...and removed


async def test_unsupported_copies_answer_a_copy_answer_with_a_reason(pool: Pool) -> None:
    raw = clone_json(pool, "x", str(uuid.uuid4()), MIB)
    body = raw["org.apache.cloudstack.storage.command.CopyCommand"]
    body["srcTO"], body["destTO"] = body["destTO"], body["srcTO"]  # volume -> template
    cmd = wire(raw)
    answer = await run(cmd, Ctx(config(), pool.volumes))
    assert isinstance(answer, CopyCmdAnswer) and not answer.result
    assert "is not supported by this agent" in (answer.details or "")
    assert not verdict_for(cmd, answer).ok


# --- CreateObjectCommand: an empty volume -------------------------------------------------


def create_json(pool: Pool, vol: str, size: int, **more: Any) -> dict[str, Any]:
    data = volume_to(pool, vol, size, volumeType="DATADISK", name="DATA-1", **more)
    return {
        "org.apache.cloudstack.storage.command.CreateObjectCommand": {
            "data": data,
            "contextMap": {},
            "wait": 0,
            "bypassHostMaintenance": False,
        }
    }


async def test_create_object_makes_an_empty_volume_of_the_size_and_format(pool: Pool) -> None:
    ctx = Ctx(config(), pool.volumes)
    vol = str(uuid.uuid4())
    cmd = wire(create_json(pool, vol, 40 * MIB))
    answer = await run(cmd, ctx)
    verdict = verdict_for(cmd, answer)
    assert verdict.ok and verdict.read == {"path": vol, "size": 40 * MIB, "format": "QCOW2"}
    made = info(pool.dir / vol)
    assert made["format"] == "qcow2" and made["virtual-size"] == 40 * MIB
    assert "backing-filename" not in made
    # No format: the pool's default (qcow2); RAW: a raw file.
    plain, raw = str(uuid.uuid4()), str(uuid.uuid4())
    no_format = create_json(pool, plain, MIB)
    del no_format["org.apache.cloudstack.storage.command.CreateObjectCommand"]["data"][
        TO + "VolumeObjectTO"
    ]["format"]
    cmd = wire(no_format)
    assert verdict_for(cmd, await run(cmd, ctx)).read["format"] == "QCOW2"
    assert info(pool.dir / plain)["format"] == "qcow2"
    cmd = wire(create_json(pool, raw, 2 * MIB, format="RAW"))
    assert verdict_for(cmd, await run(cmd, ctx)).read["format"] == "RAW"
    assert info(pool.dir / raw)["format"] == "raw"
    assert (pool.dir / raw).stat().st_size == 2 * MIB
    assert files(pool.dir) == {vol, plain, raw}


async def test_create_object_refuses_what_it_cannot_make(pool: Pool) -> None:
    ctx = Ctx(config(), pool.volumes)
    for cmd, text in [
        (wire(create_json(pool, str(uuid.uuid4()), MIB, format="VHD")), "format vhd"),
        (wire(create_json(pool, str(uuid.uuid4()), 0)), "invalid size"),
        (wire(create_json(pool, "../escape", MIB)), "invalid file name"),
        (wire(create_json(pool, str(uuid.uuid4()), MIB, passphrase=[1, -2])), "encrypted"),
        (wire(create_json(pool, str(uuid.uuid4()), MIB, dataStore=store(pool, "CLVM"))), "CLVM"),
    ]:
        answer = await run(cmd, ctx)
        assert isinstance(answer, CreateObjectAnswer) and not answer.result
        assert text in (answer.details or ""), answer.details
        assert not verdict_for(cmd, answer).ok
    assert files(pool.dir) == set()


# --- DeleteCommand -------------------------------------------------------------------------


def delete_json(pool: Pool, path: str) -> dict[str, Any]:
    data = volume_to(pool, path, MIB, path=path)
    return {
        "org.apache.cloudstack.storage.command.DeleteCommand": {
            "data": data,
            "contextMap": {},
            "wait": 0,
            "bypassHostMaintenance": False,
        }
    }


async def test_delete_removes_the_volume_and_an_absent_one_is_deleted_already(
    pool: Pool,
) -> None:
    ctx = Ctx(config(), pool.volumes)
    vol = str(uuid.uuid4())
    qemu_img("create", "-q", "-f", "qcow2", str(pool.dir / vol), "1M")
    cmd = wire(delete_json(pool, vol))
    answer = await run(cmd, ctx)
    assert type(answer) is Answer and answer.result and verdict_for(cmd, answer).ok
    assert files(pool.dir) == set()
    again = await run(cmd, ctx)  # as the Java agent: not there counts as deleted
    assert type(again) is Answer and again.result and verdict_for(cmd, again).ok


async def test_delete_never_leaves_the_pool(pool: Pool, tmp_path: Path) -> None:
    ctx = Ctx(config(), pool.volumes)
    outside = tmp_path / "precious"
    outside.write_text("keep")
    for path in ("../precious", str(outside), ".", ""):
        cmd = wire(delete_json(pool, path))
        answer = await run(cmd, ctx)
        assert isinstance(answer, Answer) and not answer.result, path
        assert not verdict_for(cmd, answer).ok
    assert outside.read_text() == "keep"


def test_file_names_stay_in_the_pool() -> None:
    assert file_name("abc", "/mnt/p", "v") == "abc"
    assert file_name("/mnt/p/abc", "/mnt/p/", "v") == "abc"  # older MSs: the full path
    for bad in ("/etc/abc", "a/b", "..", ".hidden", "", None, "/mnt/p/../q/abc"):
        with pytest.raises(VolumeError):
            file_name(bad, "/mnt/p", "v")


async def test_no_handler_module_answers_a_plain_answer_to_copy_or_create(pool: Pool) -> None:
    # the answer classes the MS casts to, also for a payload that is no volume at all
    ctx = Ctx(config(), pool.volumes)
    raw = create_json(pool, str(uuid.uuid4()), MIB)
    body = raw["org.apache.cloudstack.storage.command.CreateObjectCommand"]
    body["data"] = {TO + "SnapshotObjectTO": {"path": "x"}}
    answer = await run(wire(raw), ctx)
    assert isinstance(answer, CreateObjectAnswer) and not answer.result
    assert "SnapshotObjectTO" in (answer.details or "") or "Unknown" in (answer.details or "")
    assert os.listdir(pool.dir) == []
