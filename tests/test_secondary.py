"""A template from NFS secondary storage to primary (CopyCommand with an NfsTO source).

There is no NFS client in this kernel: where and how the store is mounted is tested as the
mount's name and path (Java's nameUUIDFromBytes), libvirt's transient netfs pool on the test
driver, and the counting of its users; the copy itself runs the real qemu-img from a local
directory standing in for the mounted store (a seam on the mount step only).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import trio
from attrs import define

from agent.handlers import volumes as handlers
from agent.hypervisor.connection import Hypervisor
from agent.hypervisor.pooldefs import PoolKind, dir_pool
from agent.hypervisor.pools import Pools
from agent.hypervisor.secondary import (
    LibvirtMounter,
    SecondaryError,
    SecondaryLocation,
    SecondaryStorage,
    locate,
    name_uuid_from_bytes,
    secondary_pool_xml,
)
from agent.hypervisor.volumes import Volumes
from lab.ms.zone import name_uuid_from_bytes as lab_name_uuid
from lab.ms_side import verdict_for
from protocol.messages.data_to import TemplateObjectTO
from protocol.messages.volumes import CopyCmdAnswer
from tests.test_volumes import MIB, TO, Ctx, Pool, back, config, info, qemu_img, store, wire

# --- where the Java agent mounts a template (pure) ------------------------------------------


def test_the_mount_is_named_as_java_names_it() -> None:
    # UUID.nameUUIDFromBytes(new byte[0]): the MD5 of nothing, as a version-3 UUID.
    assert name_uuid_from_bytes(b"") == "d41d8cd9-8f00-3204-a980-0998ecf8427e"
    data = b"10.0.0.9/export/sec/template/tmpl/2/201"
    assert name_uuid_from_bytes(data) == lab_name_uuid(data)
    assert uuid.UUID(name_uuid_from_bytes(data)).version == 3


def test_the_templates_directory_is_mounted_and_the_file_is_its_last_component() -> None:
    loc = locate("nfs://10.0.0.9/export/sec", "template/tmpl/2/201/5e1f.qcow2")
    assert (loc.host, loc.export, loc.file_name) == (
        "10.0.0.9",
        "/export/sec/template/tmpl/2/201",
        "5e1f.qcow2",
    )
    assert loc.uuid == name_uuid_from_bytes(b"10.0.0.9/export/sec/template/tmpl/2/201")
    assert loc.target("/mnt") == f"/mnt/{loc.uuid}"
    # A trailing slash on the store and '//' in the path collapse, as Java's replace("//")
    same = locate("nfs://10.0.0.9/export/sec/", "template//tmpl/2/201/5e1f.qcow2")
    assert same == loc
    # No file name: the directory (the first *.qcow2 there is taken later)
    assert locate("nfs://h/e", "template/tmpl/1/2/").file_name is None
    assert locate("nfs://[fd00::9]:2049/e", "t/x.qcow2").host == "[fd00::9]"


@pytest.mark.parametrize(
    ("url", "path", "text"),
    [
        ("s3://bucket/x", "template/1.qcow2", "is not NFS"),
        ("nfs:///export", "template/1.qcow2", "no server"),
        (None, "template/1.qcow2", "no template to copy"),
        ("nfs://h/e", "..", "no file name"),
    ],
)
def test_what_cannot_be_mounted_says_why(url: str | None, path: str, text: str) -> None:
    with pytest.raises(SecondaryError, match=text):
        locate(url, path)


def test_libvirt_mounts_it_as_a_netfs_pool_without_format_or_options() -> None:
    loc = locate("nfs://10.0.0.9/export/sec", "template/tmpl/2/201/5e1f.qcow2")
    root = ET.fromstring(secondary_pool_xml(loc, "/mnt"))
    assert root.get("type") == "netfs"
    assert root.findtext("name") == root.findtext("uuid") == loc.uuid
    assert root.find("source/host").get("name") == "10.0.0.9"  # type: ignore[union-attr]
    assert root.find("source/dir").get("path") == "/export/sec/template/tmpl/2/201"  # type: ignore[union-attr]
    assert root.findtext("target/path") == f"/mnt/{loc.uuid}"
    assert root.find("source/format") is None and "mount_opts" not in ET.tostring(root, "unicode")


@pytest.fixture
async def hypervisor() -> AsyncIterator[Hypervisor]:
    hv = Hypervisor("test:///default")
    async with trio.open_nursery() as nursery:
        await nursery.start(hv.run)
        yield hv
        nursery.cancel_scope.cancel()


async def test_the_mount_is_a_transient_libvirt_pool_kept_while_used(
    hypervisor: Hypervisor, tmp_path: Path
) -> None:
    loc = locate(f"nfs://10.0.0.9/export/{uuid.uuid4()}", "template/tmpl/2/201/5e1f.qcow2")
    storage = SecondaryStorage(LibvirtMounter(hypervisor))

    def pool(conn: Any) -> tuple[bool, bool, str] | None:
        try:
            p = conn.storagePoolLookupByName(loc.uuid)
        except libvirt.libvirtError:
            return None
        return bool(p.isActive()), bool(p.isPersistent()), p.XMLDesc(0)

    async with storage.mounted(loc, str(tmp_path)) as first:
        assert first == f"{tmp_path}/{loc.uuid}" and Path(first).is_dir()
        found = await hypervisor.call(pool)
        assert found is not None
        active, persistent, xml = found
        assert active and not persistent  # transient: nothing stays defined
        assert ET.fromstring(xml).find("source/dir").get("path") == loc.export  # type: ignore[union-attr]
        async with storage.mounted(loc, str(tmp_path)) as second:  # a second copy at once
            assert second == first
        assert await hypervisor.call(pool) is not None  # the first still uses it
    assert await hypervisor.call(pool) is None  # the last user unmounted it


# --- the copy, from a local directory standing in for the mount -----------------------------


@define
class LocalMount:
    """The seam: the store's directory is ``root`` + the export path; records the calls."""

    root: Path
    calls: list[str]

    async def mount(self, location: SecondaryLocation, mount_root: str) -> str:
        self.calls.append(f"mount {location.host}:{location.export} at {mount_root}")
        return str(self.root / location.export.lstrip("/"))

    async def unmount(self, location: SecondaryLocation) -> None:
        self.calls.append(f"unmount {location.uuid}")


def copy_json(template_path: str, dest: dict[str, Any]) -> dict[str, Any]:
    return {
        "org.apache.cloudstack.storage.command.CopyCommand": {
            "srcTO": {
                TO + "TemplateObjectTO": {
                    "path": template_path,
                    "origUrl": "http://dl.example/tmpl.qcow2",
                    "uuid": str(uuid.uuid4()),
                    "id": 201,
                    "format": "QCOW2",
                    "accountId": 2,
                    "hvm": True,
                    "imageDataStore": {
                        "com.cloud.agent.api.to.NfsTO": {
                            "_url": "nfs://10.0.0.9/export/sec",
                            "_role": "Image",
                        }
                    },
                    "name": "201-2-tmpl",
                    "hypervisorType": "KVM",
                    "bootable": False,
                    "directDownload": False,
                    "deployAsIs": False,
                    "followRedirects": False,
                }
            },
            "destTO": dest,
            "executeInSequence": False,
            "options": {},
            "options2": {},
            "contextMap": {},
            "wait": 10800,
            "bypassHostMaintenance": False,
        }
    }


async def test_a_template_is_copied_from_secondary_into_the_pool(
    pools: Pools, tmp_path: Path
) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("needs qemu-img")
    primary = tmp_path / "primary"
    primary.mkdir()
    spec = dir_pool(str(uuid.uuid4()), str(primary), PoolKind.LOCAL)
    await pools.add(spec)
    secondary = tmp_path / "secondary"
    tdir = secondary / "export/sec/template/tmpl/2/201"
    tdir.mkdir(parents=True)
    source = tdir / "5e1f.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(source), str(24 * MIB))
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x5a 1M 2M", str(source)], check=True, capture_output=True
    )
    mount = LocalMount(secondary, [])
    volumes = Volumes(pools, secondary=SecondaryStorage(mount))
    ctx = Ctx(config(), volumes)
    pool = Pool(spec.uuid, primary, volumes)
    dest_uuid = str(uuid.uuid4())
    dest = {
        TO + "TemplateObjectTO": {
            "uuid": dest_uuid,
            "id": 201,
            "format": "QCOW2",
            "imageDataStore": store(pool, "Filesystem"),
            "name": "201-2-tmpl",
            "hvm": True,
            "bootable": False,
            "directDownload": False,
            "deployAsIs": False,
            "followRedirects": False,
        }
    }
    cmd = wire(copy_json("template/tmpl/2/201/5e1f.qcow2", dest))
    answer = back(await handlers.copy(cmd, ctx))  # type: ignore[arg-type]
    verdict = verdict_for(cmd, answer)
    assert verdict.ok, verdict.reason
    assert verdict.read == {"installPath": dest_uuid, "templateSize": 24 * MIB}
    assert isinstance(answer, CopyCmdAnswer) and isinstance(answer.new_data, TemplateObjectTO)
    copied = primary / dest_uuid
    made = info(copied)
    assert made["format"] == "qcow2" and "backing-filename" not in made
    compare = subprocess.run(
        ["qemu-img", "compare", "-q", str(source), str(copied)], capture_output=True
    )
    assert compare.returncode == 0  # the same data
    where = locate("nfs://10.0.0.9/export/sec", "template/tmpl/2/201/5e1f.qcow2")
    assert mount.calls == [
        "mount 10.0.0.9:/export/sec/template/tmpl/2/201 at /mnt",  # mount.path
        f"unmount {where.uuid}",
    ]
    # A file that is not there: a CopyCmdAnswer that says where it looked; unmounted again.
    mount.calls.clear()
    cmd = wire(copy_json("template/tmpl/2/201/gone.qcow2", dest))
    answer = back(await handlers.copy(cmd, ctx))  # type: ignore[arg-type]
    assert isinstance(answer, CopyCmdAnswer) and not answer.result
    assert "template/tmpl/2/201/gone.qcow2 not found on secondary storage" in (answer.details or "")
    assert not verdict_for(cmd, answer).ok
    assert len(mount.calls) == 2 and mount.calls[1].startswith("unmount")
    assert sorted(p.name for p in primary.iterdir()) == [dest_uuid]
