"""The lab guest: a tiny multiboot kernel whose RAM is full of a marker, and its domain XML.

The kernel (``guest.S`` beside this file, with the filler it shares with the boot disk of
:mod:`lab.bootdisk`, ``guest_fill.inc``) is assembled at run time into the lab's workdir; no
binary is kept in the repository. Counting :data:`MARKER` in a capture of a migration tells
whether guest memory crossed the wire in clear.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

MARKER: Final = b"KVMLAB-GUEST-RAM-MARKER-7f3a9c1e"
SOURCE: Final = Path(__file__).with_name("guest.S")
FILLER: Final = Path(__file__).with_name("guest_fill.inc")  # included by guest.S, bootdisk.S
KERNEL_NAME: Final = "marker.elf"
MEMORY_MIB: Final = 128
# What the kernel prints on COM1 once 2-98 MiB hold the marker.
FILLED_LINE: Final = b"kvmlab guest: filled"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class GuestBuildError(RuntimeError):
    """The assembler or the linker failed, or the kernel lacks the marker."""


def assemble(source: Path, out: Path, ld_args: list[str]) -> None:
    """``as --32`` (includes found beside the source) and ``ld -m elf_i386 ld_args`` into
    ``out``; GuestBuildError with the tool's message if either fails."""
    obj = out.with_suffix(".o")
    steps = (
        ["as", "--32", "-I", str(source.parent), "-o", str(obj), str(source)],
        ["ld", "-m", "elf_i386", *ld_args, "-o", str(out), str(obj)],
    )
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise GuestBuildError(f"{argv[0]} {source.name} failed: {done.stderr.strip()}")


def build_kernel(directory: Path) -> Path:
    """Assemble and link the kernel into ``directory`` unless an up-to-date one is there."""
    kernel = directory / KERNEL_NAME
    newest = max(SOURCE.stat().st_mtime, FILLER.stat().st_mtime)
    if kernel.exists() and kernel.stat().st_mtime >= newest:
        return kernel
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        elf = Path(tmp) / KERNEL_NAME
        # -N: one RWX segment; 1 MiB: QEMU's multiboot loader puts the kernel there.
        assemble(SOURCE, elf, ["-N", "-Ttext", "0x100000", "-e", "_start"])
        if MARKER not in elf.read_bytes():
            raise GuestBuildError(f"{FILLER} does not hold the marker {MARKER!r}")
        elf.chmod(0o644)
        os.replace(elf, kernel)  # atomic: a concurrent reader never sees half a kernel
    return kernel


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad domain name {name!r}")
    return name


def domain_xml(name: str, kernel: Path, *, tcg: bool, serial_log: str) -> str:
    """128 MiB, 1 vCPU, the kernel and a serial pty whose output is also logged to a file.

    No ``<cpu>``: host-model/passthrough crash QEMU on a nested-KVM machine. No disk, network
    or balloon: nothing that the destination would need besides the kernel file.
    """
    check_name(name)
    return f"""<domain type='{"qemu" if tcg else "kvm"}'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='pty'>
      <log file='{escape(serial_log)}' append='off'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def count_marker(pcap: Path, marker: bytes = MARKER, chunk_size: int = 8 << 20) -> int:
    """Occurrences of ``marker`` in a file of any size, read in chunks.

    Each chunk is searched together with the last ``len(marker) - 1`` bytes of the previous
    one, so a marker across a chunk boundary is found once, and none is counted twice (the
    carried tail is too short to hold a whole one).
    """
    keep = len(marker) - 1
    count = 0
    tail = b""
    with pcap.open("rb") as f:
        while block := f.read(chunk_size):
            data = tail + block
            count += data.count(marker)
            tail = data[-keep:] if keep else b""
    return count
