"""Java enums the zone, storage and VM messages carry, by their Java names (4.21).

All are :class:`~protocol.jtypes.JavaEnum`: a name not listed here (a newer CloudStack) is
read and written back unchanged, with ``known`` False. Sources, in CloudStack 4.21:
``api/src/main/java/com/cloud/storage/Storage.java`` (ImageFormat, ProvisioningType,
StoragePoolType, StorageResourceType), ``api/.../hypervisor/Hypervisor.java``
(HypervisorType, a class of named constants), ``api/.../storage/Volume.java`` (Type),
``api/.../offering/DiskOffering.java`` (DiskCacheMode), ``api/.../storage/DataStoreRole.java``,
``api/.../vm/VirtualMachine.java`` (State, Type), ``api/.../network/Networks.java``
(TrafficType, BroadcastDomainType), ``api/.../network/element/NetworkElement.java``
(Location), ``api/.../template/VirtualMachineTemplate.java`` (BootloaderType).
"""

from __future__ import annotations

from protocol.jtypes import JavaEnum


class StoragePoolType(JavaEnum):
    FILESYSTEM = "Filesystem"  # local directory
    NETWORK_FILESYSTEM = "NetworkFilesystem"
    ISCSI_LUN = "IscsiLUN"
    ISCSI = "Iscsi"
    ISO = "ISO"
    LVM = "LVM"
    CLVM = "CLVM"
    RBD = "RBD"
    SHARED_MOUNT_POINT = "SharedMountPoint"
    VMFS = "VMFS"
    PRE_SETUP = "PreSetup"
    EXT = "EXT"
    OCFS2 = "OCFS2"
    SMB = "SMB"
    GLUSTER = "Gluster"
    POWER_FLEX = "PowerFlex"
    MANAGED_NFS = "ManagedNFS"
    LINSTOR = "Linstor"
    DATASTORE_CLUSTER = "DatastoreCluster"
    STOR_POOL = "StorPool"
    FIBER_CHANNEL = "FiberChannel"


class HypervisorType(JavaEnum):
    NONE = "None"
    XEN_SERVER = "XenServer"
    KVM = "KVM"
    VMWARE = "VMware"
    HYPERV = "Hyperv"
    VIRTUAL_BOX = "VirtualBox"
    PARRALELS = "Parralels"  # sic
    BARE_METAL = "BareMetal"
    SIMULATOR = "Simulator"
    OVM = "Ovm"
    OVM3 = "Ovm3"
    LXC = "LXC"
    CUSTOM = "Custom"
    EXTERNAL = "External"
    ANY = "Any"


class StorageResourceType(JavaEnum):
    STORAGE_POOL = "STORAGE_POOL"
    STORAGE_HOST = "STORAGE_HOST"
    SECONDARY_STORAGE = "SECONDARY_STORAGE"
    LOCAL_SECONDARY_STORAGE = "LOCAL_SECONDARY_STORAGE"


class ImageFormat(JavaEnum):
    QCOW2 = "QCOW2"
    RAW = "RAW"
    VHD = "VHD"
    ISO = "ISO"
    OVA = "OVA"
    VHDX = "VHDX"
    BAREMETAL = "BAREMETAL"
    EXTERNAL = "EXTERNAL"
    VMDK = "VMDK"
    VDI = "VDI"
    TAR = "TAR"
    ZIP = "ZIP"
    DIR = "DIR"


class ProvisioningType(JavaEnum):
    # Written by name; Java's toString() (thin/sparse/fat) is not what Gson writes.
    THIN = "THIN"
    SPARSE = "SPARSE"
    FAT = "FAT"


class VolumeType(JavaEnum):
    UNKNOWN = "UNKNOWN"
    ROOT = "ROOT"
    SWAP = "SWAP"
    DATADISK = "DATADISK"
    ISO = "ISO"


class DiskCacheMode(JavaEnum):
    NONE = "NONE"
    WRITEBACK = "WRITEBACK"
    WRITETHROUGH = "WRITETHROUGH"
    HYPERVISOR_DEFAULT = "HYPERVISOR_DEFAULT"  # CloudStack main (4.22), not in 4.21


class DataStoreRole(JavaEnum):
    PRIMARY = "Primary"
    IMAGE = "Image"
    IMAGE_CACHE = "ImageCache"
    BACKUP = "Backup"
    OBJECT = "Object"


class VmState(JavaEnum):
    """VirtualMachine.State."""

    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    DESTROYED = "Destroyed"
    EXPUNGING = "Expunging"
    MIGRATING = "Migrating"
    ERROR = "Error"
    UNKNOWN = "Unknown"
    SHUTDOWN = "Shutdown"
    RESTORING = "Restoring"


class VmType(JavaEnum):
    """VirtualMachine.Type."""

    USER = "User"
    DOMAIN_ROUTER = "DomainRouter"
    CONSOLE_PROXY = "ConsoleProxy"
    SECONDARY_STORAGE_VM = "SecondaryStorageVm"
    ELASTIC_IP_VM = "ElasticIpVm"
    ELASTIC_LOAD_BALANCER_VM = "ElasticLoadBalancerVm"
    INTERNAL_LOAD_BALANCER_VM = "InternalLoadBalancerVm"
    NET_SCALER_VM = "NetScalerVm"
    USER_BARE_METAL = "UserBareMetal"
    INSTANCE = "Instance"


class BootloaderType(JavaEnum):
    PY_GRUB = "PyGrub"
    HVM = "HVM"
    EXTERNAL = "External"
    CD = "CD"


class ConfigDriveLocation(JavaEnum):
    """NetworkElement.Location."""

    SECONDARY = "SECONDARY"
    PRIMARY = "PRIMARY"
    HOST = "HOST"


class TrafficType(JavaEnum):
    NONE = "None"
    PUBLIC = "Public"
    GUEST = "Guest"
    STORAGE = "Storage"
    MANAGEMENT = "Management"
    CONTROL = "Control"
    VPN = "Vpn"


class BroadcastDomainType(JavaEnum):
    NATIVE = "Native"
    VLAN = "Vlan"
    VSWITCH = "Vswitch"
    LINK_LOCAL = "LinkLocal"
    VNET = "Vnet"
    STORAGE = "Storage"
    LSWITCH = "Lswitch"
    MIDO = "Mido"
    PVLAN = "Pvlan"
    VXLAN = "Vxlan"
    VCS = "Vcs"
    UNDECIDED = "UnDecided"
    OPEN_DAYLIGHT = "OpenDaylight"
    TUNGSTEN = "TUNGSTEN"
    NSX = "NSX"
    NETRIS = "Netris"
