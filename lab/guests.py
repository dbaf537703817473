"""What a lab host does with guests: define and start them, make their disks, watch them.

A mixin of :class:`lab.hosts.LabHost`, which supplies the host's name, tree and kernel and
runs the commands (virsh, qemu-img) inside the host.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from lab.bootdisk import disk_domain_xml
from lab.daemons import LOCAL_URI
from lab.guest import FILLED_LINE, check_name
from lab.guest import domain_xml as _domain_xml
from lab.netns import LabError

log = structlog.get_logger("lab.guests")

QEMU_IMG_TIMEOUT: Final = 120


class HostGuests:
    """The guest operations of a lab host; LabHost supplies the attributes and the
    command runners declared first."""

    name: str
    root: Path
    kernel: Path

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        raise NotImplementedError

    def check(self, argv: Sequence[str], timeout: float = 120) -> str:
        raise NotImplementedError

    def virsh(self, *args: str, uri: str = LOCAL_URI, timeout: float = 120) -> str:
        raise NotImplementedError

    def outside(self, path: str) -> Path:
        raise NotImplementedError

    def serial_log(self, name: str) -> str:
        return f"/var/log/libvirt/qemu/{check_name(name)}-serial.log"

    def define_domain(self, name: str, xml: str, *, start: bool = True) -> str:
        """Define ``xml`` (persistent, named ``name``) and start it unless ``start=False``."""
        path = self.root / f"{check_name(name)}.xml"
        path.write_text(xml)
        self.virsh("define", str(path))
        if start:
            self.virsh("start", name)
        return name

    def define_guest(self, name: str = "guest1", *, start: bool = True, tcg: bool = True) -> str:
        """Define (persistent) and start the marker guest; TCG by default: under nested KVM
        its RAM fill is slow (lab.md). Its kernel is at the same path in every host."""
        xml = _domain_xml(name, self.kernel, tcg=tcg, serial_log=self.serial_log(name))
        self.define_domain(name, xml, start=start)
        log.info("lab.guest_defined", host=self.name, guest=name, started=start, tcg=tcg)
        return name

    def define_disk_guest(
        self,
        name: str,
        disk: str,
        *,
        start: bool = True,
        tcg: bool = True,
        bridge: str | None = None,
        mac: str | None = None,
    ) -> str:
        """Define (persistent) and start a VM booting the marker guest from ``disk`` (a qcow2
        file as this host sees it, e.g. from :meth:`create_overlay`); with ``bridge``, a
        virtio NIC on it. See :func:`lab.bootdisk.disk_domain_xml`."""
        serial_log = self.serial_log(name)
        xml = disk_domain_xml(name, disk, tcg=tcg, serial_log=serial_log, bridge=bridge, mac=mac)
        self.define_domain(name, xml, start=start)
        log.info("lab.disk_guest_defined", host=self.name, guest=name, disk=disk, bridge=bridge)
        return name

    def create_overlay(self, path: str, backing: str) -> str:
        """``qemu-img create -f qcow2 -b backing -F qcow2 path`` inside the host (paths as the
        host sees them: the backing file's path is written into the overlay); ``path``."""
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", path]
        self.check(argv, timeout=QEMU_IMG_TIMEOUT)
        return path

    def create_disk(self, path: str, size: int) -> str:
        """An empty qcow2 of ``size`` bytes at ``path`` inside the host; ``path``."""
        self.check(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
        return path

    def wait_guest_filled(self, name: str = "guest1", timeout: float = 60) -> float:
        """Until the guest, running here, says its RAM holds the marker; the seconds waited.

        The guest repeats it every ~0.4 s, and each start or incoming migration rewrites its
        serial log here: after a migration this also shows that it runs on this host."""
        t0 = time.monotonic()
        path = self.outside(self.serial_log(name))
        while not (path.exists() and FILLED_LINE in path.read_bytes()):
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{name} on {self.name}: RAM not filled within {timeout} s")
            time.sleep(0.05)
        return time.monotonic() - t0

    def domain_state(self, name: str) -> str | None:
        """``virsh domstate`` ("running", "shut off", ...), or None if not defined here."""
        done = self.run(
            ["virsh", "-c", LOCAL_URI, "domstate", name], capture_output=True, text=True
        )
        if done.returncode == 0:
            return str(done.stdout).strip()
        if "failed to get domain" in done.stderr or "Domain not found" in done.stderr:
            return None
        raise LabError(f"{self.name}: virsh domstate {name}: {done.stderr.strip()}")

    def remove_domain(self, name: str) -> None:
        """Destroy (if running) and undefine ``name`` here; nothing if it is not defined."""
        state = self.domain_state(name)
        if state is None:
            return
        if state != "shut off":
            self.virsh("destroy", name)
        if self.domain_state(name) is not None:  # a transient domain is gone once destroyed
            self.virsh("undefine", name)
