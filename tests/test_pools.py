"""Storage pools: their libvirt definitions (pure), and their life cycle on libvirt's test
driver (no daemon). The real pools (libvirtd, a shared directory, NFS mounts as libvirt would
run them) are in tests/test_lab_pools.py."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from agent.config import AgentConfig, ConfigError
from agent.hypervisor.pooldefs import (
    FS_NS,
    PoolError,
    PoolKind,
    dir_pool,
    mount_options,
    nfs_pool,
    parse_pool_xml,
    pool_xml,
)
from agent.hypervisor.pools import Pools, disks_of

NFS_UUID = "5b9c7a2e-3f0d-4c1e-9a8b-7d6e5f4a3b2c"


def new_uuid() -> str:
    return str(uuid.uuid4())


# --- definitions (pure) ---------------------------------------------------------------


def test_an_nfs_pool_is_a_netfs_pool_mounted_at_mnt_uuid_with_its_mount_options() -> None:
    spec = nfs_pool(NFS_UUID, "10.0.0.9", "/export/primary/", options=" vers=4.1, nconnect=4 ,")
    assert spec.kind is PoolKind.NFS
    assert spec.target == f"/mnt/{NFS_UUID}"
    assert spec.mount_source == "10.0.0.9:/export/primary"  # trailing slash gone, as Java
    root = ET.fromstring(pool_xml(spec))
    assert root.tag == "pool" and root.get("type") == "netfs"
    assert root.findtext("name") == root.findtext("uuid") == NFS_UUID
    assert root.find("source/host").get("name") == "10.0.0.9"  # type: ignore[union-attr]
    assert root.find("source/dir").get("path") == "/export/primary"  # type: ignore[union-attr]
    assert root.findtext("target/path") == f"/mnt/{NFS_UUID}"
    options = root.findall(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option")
    assert [o.get("name") for o in options] == ["vers=4.1", "nconnect=4"]
    assert f"xmlns:fs='{FS_NS}'" in pool_xml(spec).replace('"', "'")
    # Without options there is no fs: element (nor namespace), as LibvirtStoragePoolDef writes.
    plain = pool_xml(nfs_pool(NFS_UUID, "nfs.example", "/x", mount_root="/srv/mounts"))
    assert "mount_opts" not in plain and FS_NS not in plain
    assert ET.fromstring(plain).findtext("target/path") == f"/srv/mounts/{NFS_UUID}"


def test_shared_mount_point_and_local_pools_are_dir_pools_at_their_path() -> None:
    for kind in (PoolKind.SHARED_MOUNT_POINT, PoolKind.LOCAL):
        spec = dir_pool(NFS_UUID, "/var/lib/libvirt/images/", kind)
        assert spec.target == "/var/lib/libvirt/images" and spec.mount_source is None
        root = ET.fromstring(pool_xml(spec))
        assert root.get("type") == "dir" and root.find("source") is None
        assert root.findtext("target/path") == "/var/lib/libvirt/images"
        assert parse_pool_xml(pool_xml(spec)).differs_from(spec) is None


def test_mount_options_are_read_as_the_java_agent_reads_them() -> None:
    assert mount_options(None) == mount_options("") == ()
    assert mount_options("vers=3, soft ,\ttimeo=600,,") == ("vers=3", "soft", "timeo=600")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: dir_pool("../../etc", "/x", PoolKind.SHARED_MOUNT_POINT), "invalid pool uuid"),
        (lambda: dir_pool(NFS_UUID, "relative/dir", PoolKind.LOCAL), "not an absolute path"),
        (lambda: dir_pool(NFS_UUID, None, PoolKind.SHARED_MOUNT_POINT), "not an absolute path"),
        (lambda: nfs_pool(NFS_UUID, "", "/export"), "invalid server"),
        (lambda: nfs_pool(NFS_UUID, "a/b", "/export"), "invalid server"),
        (lambda: nfs_pool(NFS_UUID, "-oremount", "/export"), "invalid server"),
        (lambda: nfs_pool(NFS_UUID, "nfs", "export"), "not an absolute path"),
    ],
)
def test_what_cannot_name_a_pool_is_refused(build: Any, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        build()


def test_a_definition_that_differs_says_how() -> None:
    spec = dir_pool(NFS_UUID, "/srv/a", PoolKind.SHARED_MOUNT_POINT)
    other = parse_pool_xml(pool_xml(dir_pool(NFS_UUID, "/srv/b", PoolKind.SHARED_MOUNT_POINT)))
    assert other.differs_from(spec) == (
        "libvirt has dir at /srv/b, the management server asks for dir at /srv/a"
    )
    nfs = nfs_pool(NFS_UUID, "s1", "/e", options="vers=3")
    assert parse_pool_xml(pool_xml(nfs)).mount_options == {"vers=3"}
    moved = nfs_pool(NFS_UUID, "s2", "/e")
    assert "netfs s1:/e at" in (parse_pool_xml(pool_xml(nfs)).differs_from(moved) or "")


def test_disks_are_found_by_path_or_pool_and_cdroms_are_not_disks() -> None:
    xml = """<domain><devices>
      <disk type='file' device='disk'><source file='/mnt/p/vol1'/></disk>
      <disk type='file' device='cdrom'><source file='/mnt/p/systemvm.iso'/></disk>
      <disk type='volume' device='disk'><source pool='P' volume='v'/></disk>
      <disk type='block' device='lun'><source dev='/dev/sdb'/></disk>
      <disk type='file' device='disk'/>
    </devices></domain>"""
    assert list(disks_of(xml)) == [("/mnt/p/vol1", None), (None, "P"), ("/dev/sdb", None)]


# --- the life cycle on libvirt's test driver -------------------------------------------


async def libvirt_pool(pools: Pools, name: str) -> dict[str, Any] | None:
    def look(conn: Any) -> dict[str, Any] | None:
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            return None
        return {
            "active": bool(pool.isActive()),
            "persistent": bool(pool.isPersistent()),
            "uuid": pool.UUIDString(),
            "xml": pool.XMLDesc(0),
        }

    return await pools.hypervisor.call(look)


async def test_a_shared_pool_is_defined_started_reused_and_removed(
    pools: Pools, tmp_path: Path
) -> None:
    spec = dir_pool(new_uuid(), str(tmp_path), PoolKind.SHARED_MOUNT_POINT)
    info = await pools.add(spec)
    assert info.active and info.name == info.uuid == spec.uuid
    assert info.capacity > 0 and info.capacity == info.allocation + info.available
    found = await libvirt_pool(pools, spec.uuid)
    assert found is not None and found["active"] and found["persistent"]
    assert parse_pool_xml(found["xml"]).target == str(tmp_path)
    assert pools.attached == {spec.uuid: spec}
    # Attaching again (the MS does at every connect) reuses it.
    again = await pools.add(spec)
    assert again.uuid == spec.uuid and again.active
    # A pool that was stopped (libvirtd restarted, a host reboot) is set up afresh.
    await pools.hypervisor.call(lambda c: c.storagePoolLookupByName(spec.uuid).destroy())
    assert not (await libvirt_pool(pools, spec.uuid) or {}).get("active")
    assert (await pools.add(spec)).active
    # Stats start a stopped pool too (the Java agent's getStoragePool does).
    await pools.hypervisor.call(lambda c: c.storagePoolLookupByName(spec.uuid).destroy())
    stats = await pools.info(spec.uuid)
    assert stats is not None and stats.active and stats.capacity == info.capacity
    assert await pools.remove(spec.uuid)
    assert await libvirt_pool(pools, spec.uuid) is None
    assert pools.attached == {}
    assert not await pools.remove(spec.uuid)  # nothing left: no error
    assert await pools.info(spec.uuid) is None


async def test_a_missing_directory_is_refused_and_leaves_nothing_behind(
    pools: Pools, tmp_path: Path
) -> None:
    spec = dir_pool(new_uuid(), str(tmp_path / "not-mounted"), PoolKind.SHARED_MOUNT_POINT)
    with pytest.raises(PoolError, match="is not a directory on this host; mount the shared"):
        await pools.add(spec)
    assert await libvirt_pool(pools, spec.uuid) is None
    assert not (tmp_path / "not-mounted").exists()  # libvirt was not let create it
    local = dir_pool(new_uuid(), str(tmp_path / "nope"), PoolKind.LOCAL)
    with pytest.raises(PoolError, match=r"fix local\.storage\.path"):
        await pools.add(local)


async def test_another_pool_on_the_same_path_makes_way(pools: Pools, tmp_path: Path) -> None:
    # As libvirt's "default" pool on /var/lib/libvirt/images for a local pool there.
    other = f"default-{uuid.uuid4().hex[:8]}"
    xml = f"<pool type='dir'><name>{other}</name><target><path>{tmp_path}</path></target></pool>"
    await pools.hypervisor.call(lambda c: c.storagePoolDefineXML(xml, 0).create(0))
    spec = dir_pool(new_uuid(), str(tmp_path), PoolKind.LOCAL)
    assert (await pools.add(spec)).active
    assert await libvirt_pool(pools, other) is None
    assert await pools.remove(spec.uuid)


async def test_a_pool_of_that_uuid_elsewhere_is_refused_not_reused(
    pools: Pools, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pool_uuid = new_uuid()
    await pools.add(dir_pool(pool_uuid, str(tmp_path / "a"), PoolKind.SHARED_MOUNT_POINT))
    moved = dir_pool(pool_uuid, str(tmp_path / "b"), PoolKind.SHARED_MOUNT_POINT)
    with pytest.raises(PoolError) as caught:
        await pools.add(moved)
    text = str(caught.value)
    assert f"dir at {tmp_path / 'a'}" in text and f"dir at {tmp_path / 'b'}" in text
    assert f"virsh pool-undefine {pool_uuid}" in text
    found = await libvirt_pool(pools, pool_uuid)
    assert found is not None and found["active"]  # the running pool is left alone
    assert parse_pool_xml(found["xml"]).target == str(tmp_path / "a")
    assert await pools.remove(pool_uuid)


async def test_an_nfs_pool_is_defined_with_its_source_and_mount_point(pools: Pools) -> None:
    # The test driver mounts nothing: what libvirt would mount is in the definition
    # (tests/test_lab_pools.py has a real libvirtd run the mount).
    spec = nfs_pool(new_uuid(), "10.0.0.9", "/export/primary")
    info = await pools.add(spec)
    assert info.active and info.libvirt_type == "netfs"
    assert info.target == f"/mnt/{spec.uuid}"
    found = await libvirt_pool(pools, spec.uuid)
    assert found is not None
    definition = parse_pool_xml(found["xml"])
    assert (definition.source_host, definition.source_dir) == ("10.0.0.9", "/export/primary")
    assert await pools.remove(spec.uuid)


async def test_domains_on_a_pool_are_found_and_destroyed(pools: Pools, tmp_path: Path) -> None:
    names = {"on": f"on-{uuid.uuid4().hex[:6]}", "off": f"off-{uuid.uuid4().hex[:6]}"}
    disks = {"on": tmp_path / "pool" / "vol1", "off": tmp_path / "elsewhere" / "vol2"}

    def xml(key: str) -> str:
        return (
            f"<domain type='test'><name>{names[key]}</name><memory>65536</memory>"
            "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
            f"<source file='{disks[key]}'/><target dev='vda'/></disk></devices></domain>"
        )

    for key in names:
        definition = xml(key)
        await pools.hypervisor.call(lambda c: c.createXML(definition, 0))  # noqa: B023
    try:
        on_pool = await pools.domains_on(str(tmp_path / "pool"))
        assert on_pool == [names["on"]]
        assert await pools.domains_on(str(tmp_path / "po")) == []  # a prefix is not a parent
        await pools.destroy_domain(names["on"])
        await pools.destroy_domain(names["on"])  # already gone: no error
        running = await pools.hypervisor.running_domains()
        assert names["on"] not in running and names["off"] in running
    finally:
        await pools.destroy_domain(names["off"])


def test_local_storage_keys_pair_uuids_with_paths_as_the_java_agent_reads_them() -> None:
    u1, u2 = new_uuid(), new_uuid()
    base = {"guid": "g"}
    assert AgentConfig.from_properties(base).local_storage == ()  # no uuid: no local pool
    cfg = AgentConfig.from_properties(
        {**base, "local.storage.uuid": f"{u1}, {u2}", "local.storage.path": "/a/,/b/c"}
    )
    assert cfg.local_storage == ((u1, "/a"), (u2, "/b/c"))
    one = AgentConfig.from_properties({**base, "local.storage.uuid": u1})
    assert one.local_storage == ((u1, "/var/lib/libvirt/images"),)  # the Java default path
    with pytest.raises(ConfigError, match=r"2 uuid\(s\) for 1 path\(s\)"):
        AgentConfig.from_properties({**base, "local.storage.uuid": f"{u1},{u2}"})
    with pytest.raises(
        ConfigError, match=re.escape("'local.storage.uuid': 'not-a-uuid' is not a UUID")
    ):
        AgentConfig.from_properties({**base, "local.storage.uuid": "not-a-uuid"})
    with pytest.raises(ConfigError, match=re.escape("'mount.path'")):
        AgentConfig.from_properties({**base, "mount.path": "mnt"})
