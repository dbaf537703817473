"""Live migration: MigrateCommand on the source, PrepareForMigrationCommand on the target."""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import frozen

from protocol.model import Answer, Command, jfield

_API = "com.cloud.agent.api."


@frozen
class MigrateDiskInfo:
    serial_number: str | None = jfield("serialNumber", default=None)
    disk_type: str | None = jfield("diskType", default=None)  # FILE / BLOCK
    driver_type: str | None = jfield("driverType", default=None)  # QCOW2 / RAW
    source: str | None = jfield("source", default=None)  # FILE / DEV
    source_text: str | None = jfield("sourceText", default=None)
    backing_store_text: str | None = jfield("backingStoreText", default=None)
    is_source_disk_on_storage_file_system: bool = jfield(
        "isSourceDiskOnStorageFileSystem", default=False
    )


@frozen
class MigrateCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "MigrateCommand"

    vm_name: str | None = jfield("vmName", default=None)
    # Current CloudStack names; the names in brackets are what older versions sent.
    dest_ip: str | None = jfield("destinationIp", default=None, aliases=("destIp",))
    migrate_storage: dict[str, MigrateDiskInfo] | None = jfield("migrateStorage", default=None)
    migrate_storage_managed: bool = jfield("migrateStorageManaged", default=False)
    migrate_non_shared_inc: bool = jfield("migrateNonSharedInc", default=False)
    auto_convergence: bool = jfield("autoConvergence", default=False)
    host_guid: str | None = jfield("hostGuid", default=None)
    is_windows: bool = jfield("windows", default=False, aliases=("isWindows",))
    vm_to: dict[str, Any] | None = jfield("virtualMachine", default=None, aliases=("vmTO",))
    execute_in_sequence: bool = jfield("executeInSequence", default=False)
    migrate_disk_info_list: list[MigrateDiskInfo] | None = jfield(
        "migrateDiskInfoList", default=None
    )
    dpdk_interface_mapping: dict[str, Any] | None = jfield("dpdkInterfaceMapping", default=None)
    new_vm_cpu_shares: int | None = jfield("newVmCpuShares", default=None)
    vlan_to_persistence_map: dict[str, bool] | None = jfield("vlanToPersistenceMap", default=None)
    # Not sent by CloudStack: an optional hint that the destination is secured (seed design).
    dest_secured: bool | None = jfield("destSecured", default=None)

    def executes_in_sequence(self) -> bool:
        return self.execute_in_sequence


@frozen
class MigrateAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "MigrateAnswer"

    vnc_port: int | None = jfield("vncPort", default=None)


@frozen
class PrepareForMigrationCommand(Command):
    JAVA_CLASS: ClassVar[str] = _API + "PrepareForMigrationCommand"
    IN_SEQUENCE: ClassVar[bool] = True

    vm: dict[str, Any] | None = jfield("vm", default=None)  # VirtualMachineTO, kept raw
    rollback: bool = jfield("rollback", default=False)

    @property
    def vm_name(self) -> str | None:
        name = (self.vm or {}).get("name")
        return name if isinstance(name, str) else None


@frozen
class PrepareForMigrationAnswer(Answer):
    JAVA_CLASS: ClassVar[str] = _API + "PrepareForMigrationAnswer"

    dpdk_interface_mapping: dict[str, Any] | None = jfield("dpdkInterfaceMapping", default=None)
    new_vm_cpu_shares: int | None = jfield("newVmCpuShares", default=None)
