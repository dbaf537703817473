"""The lab guest's helpers: the kernel build, its domain XML, counting the marker."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from lab.guest import MARKER, build_kernel, count_marker, domain_xml


@pytest.mark.parametrize("chunk_size", [7, 31, 32, 33, 1000, 8 << 20])
def test_count_marker_across_chunk_boundaries(tmp_path: Path, chunk_size: int) -> None:
    data = b"".join(b"x" * gap + MARKER for gap in range(0, 70, 3)) + MARKER[:-1] + b"tail"
    path = tmp_path / "capture"
    path.write_bytes(data)
    assert count_marker(path, chunk_size=chunk_size) == data.count(MARKER) == 24


def test_count_marker_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert count_marker(tmp_path / "empty") == 0


def test_domain_xml_is_the_minimal_guest() -> None:
    xml = domain_xml("guest1", Path("/lab/marker.elf"), tcg=True, serial_log="/var/log/x.log")
    assert "<domain type='qemu'>" in xml
    assert "<kernel>/lab/marker.elf</kernel>" in xml
    assert "<memballoon model='none'/>" in xml
    assert "<cpu" not in xml and "<disk" not in xml and "<interface" not in xml
    assert "type='kvm'" in domain_xml("g", Path("/k"), tcg=False, serial_log="/l")
    with pytest.raises(ValueError):
        domain_xml("bad name'", Path("/k"), tcg=True, serial_log="/l")


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="needs binutils")
def test_kernel_is_a_32_bit_multiboot_image_holding_the_marker(tmp_path: Path) -> None:
    kernel = build_kernel(tmp_path)
    image = kernel.read_bytes()
    assert image[:5] == b"\x7fELF\x01"  # ELF, 32-bit: QEMU refuses a 64-bit multiboot image
    header = image.find(struct.pack("<I", 0x1BADB002))
    assert 0 <= header < 8192 and header % 4 == 0  # where the multiboot spec looks for it
    magic, flags, checksum = struct.unpack_from("<III", image, header)
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert MARKER in image
    mtime = kernel.stat().st_mtime_ns
    assert build_kernel(tmp_path) == kernel and kernel.stat().st_mtime_ns == mtime
