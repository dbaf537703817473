"""The lab's bootable marker disk (lab/bootdisk.py): the image, its boot, its domain XML.

No lab needed: the image is checked with qemu-img and booted by a plain QEMU (TCG).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lab.bootdisk import (
    DISK_MARKER,
    MARKER_DATA_BYTES,
    PROGRAM_SECTORS,
    SECTOR,
    VIRTUAL_SIZE,
    build_template,
    disk_domain_xml,
)
from lab.guest import FILLED_LINE, MARKER, count_marker

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("as", "ld", "qemu-img")), reason="needs binutils, qemu-img"
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("bootdisk"))


@needs_tools
def test_template_is_a_qcow2_boot_disk_full_of_markers(template: Path, tmp_path: Path) -> None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(template)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == VIRTUAL_SIZE
    assert "backing-filename" not in info
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(template), str(raw)], check=True)
    data = raw.read_bytes()
    assert data[510:512] == b"\x55\xaa"  # a BIOS boot sector
    program_end = (1 + PROGRAM_SECTORS) * SECTOR
    assert MARKER in data[:program_end]  # the filler's copy
    assert DISK_MARKER not in data[:program_end]  # never loaded: only the disk has it
    sectors = MARKER_DATA_BYTES // SECTOR
    assert data.count(DISK_MARKER) == sectors
    assert data.count(MARKER) == 15 * sectors + 1
    # The qcow2 file holds the data as it is: a copy of the file shows the markers too.
    assert count_marker(template, DISK_MARKER) == sectors


@needs_tools
def test_template_is_built_once_and_rebuilt_when_stale(template: Path) -> None:
    mtime = template.stat().st_mtime_ns
    assert build_template(template.parent) == template
    assert template.stat().st_mtime_ns == mtime
    stale = template.with_name("bootdisk-000000000000.qcow2")
    stale.write_bytes(b"old")
    template.rename(template.with_suffix(".moved"))
    rebuilt = build_template(template.parent)
    assert rebuilt == template and template.exists() and not stale.exists()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
@needs_tools
def test_the_disk_boots_the_marker_guest(template: Path, tmp_path: Path) -> None:
    """BIOS, boot sector, int 13h, protected mode, the RAM fill: "filled" on COM1."""
    serial = tmp_path / "serial.log"
    argv = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "128", "-display", "none"]
    argv += ["-nodefaults", "-snapshot", "-serial", f"file:{serial}"]
    argv += ["-drive", f"file={template},if=virtio,format=qcow2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (serial.exists() and FILLED_LINE in serial.read_bytes()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, serial.read_bytes()
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.communicate()
    assert serial.read_bytes().startswith(b"kvmlab guest: booted\n")


def test_disk_domain_xml_boots_from_the_disk() -> None:
    xml = disk_domain_xml("vm1", "/mnt/pool/vm1-root", serial_log="/var/log/x.log")
    assert "<domain type='qemu'>" in xml
    assert "<kernel" not in xml and "<cpu" not in xml and "<interface" not in xml
    assert "<boot dev='hd'/>" in xml
    assert "<driver name='qemu' type='qcow2' cache='none'/>" in xml
    assert '<source file="/mnt/pool/vm1-root"/>' in xml
    assert "<target dev='vda' bus='virtio'/>" in xml
    assert "<log file='/var/log/x.log' append='off'/>" in xml
    nic = disk_domain_xml(
        "vm1", "/d", tcg=False, serial_log="/l", bridge="cloudbr0", mac="02:00:00:00:00:01"
    )
    assert "<domain type='kvm'>" in nic
    assert '<source bridge="cloudbr0"/>' in nic
    assert '<mac address="02:00:00:00:00:01"/>' in nic
    assert "<model type='virtio'/>" in nic
    odd = disk_domain_xml("vm1", "/a'b<c>&d", serial_log="/l")
    assert '<source file="/a\'b&lt;c&gt;&amp;d"/>' in odd
    with pytest.raises(ValueError):
        disk_domain_xml("bad name'", "/d", serial_log="/l")
