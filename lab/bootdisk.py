"""The lab guest on a bootable disk: a qcow2 template and the domain XML of a VM booting it.

The image (built at run time from ``bootdisk.S`` into the lab's workdir, cached) is what a
CloudStack template would be for the lab: sector 0 is a BIOS boot sector that loads the
32-bit program behind it and runs the RAM filler of the multiboot guest (``guest_fill.inc``:
the RAM :data:`~lab.guest.MARKER` in 2-98 MiB, "filled" on COM1), no ``<kernel>`` needed.
After the program come :data:`MARKER_DATA_BYTES` of data sectors, each 15 RAM markers and
one :data:`DISK_MARKER`: a capture of a storage migration (or any copy of the disk over the
wire) shows the RAM marker, as memory does, and the disk marker, which only the disk holds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lab.guest import FILLER, MARKER, MEMORY_MIB, GuestBuildError, assemble, check_name

SOURCE: Final = Path(__file__).with_name("bootdisk.S")
# 32 bytes, as MARKER: found in a capture only if the disk's data crossed the wire.
DISK_MARKER: Final = b"KVMLAB-GUEST-DISK-MARKER-2c6d04b"
SECTOR: Final = 512
PROGRAM_SECTORS: Final = 8  # as in bootdisk.S
MARKER_DATA_BYTES: Final = 8 << 20
VIRTUAL_SIZE: Final = 32 << 20
_DATA_SECTOR: Final = MARKER * 15 + DISK_MARKER
QEMU_IMG_TIMEOUT: Final = 120


def _stamp() -> str:
    """Names the image after what it is built from: a change rebuilds it."""
    h = hashlib.sha256()
    for part in (SOURCE, FILLER, Path(__file__)):
        h.update(part.read_bytes())
    return h.hexdigest()[:12]


def boot_program(directory: Path) -> bytes:
    """The boot sector and the program (``(1 + PROGRAM_SECTORS) * 512`` bytes), checked."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        flat = Path(tmp) / "boot.bin"
        assemble(SOURCE, flat, ["-Ttext", "0x7c00", "-e", "_start", "--oformat", "binary"])
        program = flat.read_bytes()
    if len(program) != (1 + PROGRAM_SECTORS) * SECTOR or program[510:512] != b"\x55\xaa":
        raise GuestBuildError(f"{SOURCE.name}: not a boot sector and {PROGRAM_SECTORS} sectors")
    if MARKER not in program:
        raise GuestBuildError(f"{FILLER} does not hold the marker {MARKER!r}")
    return program


def build_template(directory: Path) -> Path:
    """The qcow2 template in ``directory`` (``bootdisk-<stamp>.qcow2``), built unless an
    up-to-date one is there; older builds are removed."""
    image = directory / f"bootdisk-{_stamp()}.qcow2"
    if image.exists():
        return image
    directory.mkdir(parents=True, exist_ok=True)
    program = boot_program(directory)
    data = _DATA_SECTOR * (MARKER_DATA_BYTES // SECTOR)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        raw, qcow2 = Path(tmp) / "disk.raw", Path(tmp) / image.name
        with raw.open("wb") as f:
            f.write(program + data)
            f.truncate(VIRTUAL_SIZE)  # sparse: the rest reads as zeros, stays unallocated
        argv = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise GuestBuildError("qemu-img is missing (Debian: qemu-utils)") from None
        if done.returncode != 0:
            raise GuestBuildError(f"qemu-img convert failed: {done.stderr.strip()}")
        qcow2.chmod(0o644)
        os.replace(qcow2, image)
    for old in directory.glob("bootdisk-*.qcow2"):
        if old != image:
            old.unlink(missing_ok=True)
    return image


def disk_domain_xml(
    name: str,
    disk: str,
    *,
    tcg: bool = True,
    serial_log: str,
    bridge: str | None = None,
    mac: str | None = None,
) -> str:
    """A VM that boots from ``disk`` (a qcow2 file, as the host sees it: BIOS boot, no
    ``<kernel>``), virtio, ``cache='none'`` as CloudStack's shared pools use it; with
    ``bridge``, a virtio NIC on it (``mac`` or one libvirt picks). Otherwise the marker
    guest's: 128 MiB, 1 vCPU, no ``<cpu>`` (nested KVM), serial pty logged to a file."""
    check_name(name)
    nic = ""
    if bridge is not None:
        address = f"\n      <mac address={quoteattr(mac)}/>" if mac else ""
        nic = f"""
    <interface type='bridge'>
      <source bridge={quoteattr(bridge)}/>{address}
      <model type='virtio'/>
    </interface>"""
    return f"""<domain type='{"qemu" if tcg else "kvm"}'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file={quoteattr(disk)}/>
      <target dev='vda' bus='virtio'/>
    </disk>{nic}
    <controller type='usb' model='none'/>
    <serial type='pty'>
      <log file='{escape(serial_log)}' append='off'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""
