"""Removing every trace of a lab, running or crashed: :func:`teardown_all`.

It needs no state of the run it cleans up after: the lab's objects carry fixed names
(:mod:`lab.netns`), its pid files and marks are in the workdir.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

import structlog

from lab.netns import (
    HOST_NAME,
    NS_DIR,
    PREFIX,
    HostNamespaces,
    destroy_all,
    env,
    lab_netns,
    mount_points,
    netns_pids,
    terminate,
)
from lab.reaper import end_stale
from lab.storage import remove_shared_pool

log = structlog.get_logger("lab.teardown")

PKI_MARK: Final = "created-etc-pki"  # in the workdir: this lab made /etc/pki
REAPER_PID: Final = "reaper.pid"  # in the workdir: the lab's subreaper (lab/reaper.py)


def _pid_files(ns: HostNamespaces, root: Path) -> dict[str, list[int]]:
    """The pids of the host's libvirtd, virtlogd and QEMUs from their pid files, those in
    the host's ``/run`` and ours, kept only if they live in the host (no reused pid)."""
    found: dict[str, set[int]] = {"libvirtd": set(), "virtlogd": set(), "qemu": set()}
    for daemon in ("libvirtd", "virtlogd"):
        try:
            found[daemon].add(int((root / f"{daemon}.pid").read_text()))
        except (OSError, ValueError):
            pass
    if str(ns.mnt_file) in mount_points():
        # libvirt's pid files have no trailing newline: one per line via printf.
        script = (
            "for f in /run/libvirtd.pid /run/virtlogd.pid /run/libvirt/qemu/*.pid; do"
            ' [ -f "$f" ] && printf "%s %s\\n" "$f" "$(cat "$f")"; done; true'
        )
        out = subprocess.run(
            ["nsenter", f"--mount={ns.mnt_file}", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            env=env(),
        ).stdout
        for line in out.splitlines():
            path, _, pid = line.partition(" ")
            kind = "qemu" if path.startswith("/run/libvirt/qemu/") else Path(path).stem
            # /run/libvirt/qemu/driver.pid is libvirtd's own lock, not a QEMU's.
            if pid.isdigit() and kind in found and path != "/run/libvirt/qemu/driver.pid":
                found[kind].add(int(pid))
    return {kind: [p for p in pids if ns.holds(p)] for kind, pids in found.items()}


def teardown_all(workdir: Path) -> None:
    """Remove every trace of a lab, running or crashed; safe to call any number of times.

    Stops libvirtd (shim or not) and QEMU (SIGTERM), then virtlogd, by pid files; kills
    what is left in the lab's network namespaces; ends the lab's subreaper; unmounts the
    namespace files, deletes the namespaces (their bridges, veths and bind mounts of the
    shared pool go with them); removes ``/etc/pki`` and the pool's mount point if the lab
    created them, the shared pool's contents and the hosts' directories. The build caches
    (guest kernel and disk, shim, QEMU capabilities) and the logs stay.
    """
    t0 = time.monotonic()
    workdir = workdir.absolute()
    names = {n.removeprefix(f"{PREFIX}-") for n in lab_netns()}
    if NS_DIR.is_dir():
        names |= {p.stem for p in NS_DIR.glob("*.mnt")}
    if (workdir / "hosts").is_dir():
        names |= {p.name for p in (workdir / "hosts").iterdir()}
    names = {n for n in names if HOST_NAME.fullmatch(n)}
    pids: dict[str, list[int]] = {"libvirtd": [], "qemu": [], "virtlogd": []}
    for name in sorted(names):
        for kind, found in _pid_files(HostNamespaces(name), workdir / "hosts" / name).items():
            pids[kind] += found
    # libvirtd first: QEMUs dying under it can slow its shutdown. virtlogd last: QEMU logs
    # through it.
    for kind in ("libvirtd", "qemu", "virtlogd"):
        terminate(pids[kind], timeout=15)
    for net in lab_netns():
        terminate(netns_pids(net), timeout=5, sig=signal.SIGKILL)
    # Its children are gone now; a crashed run's reaper would otherwise wait for its socket.
    end_stale(workdir / REAPER_PID)
    destroy_all()
    remove_shared_pool(workdir)
    if (workdir / PKI_MARK).exists():
        try:
            Path("/etc/pki").rmdir()  # only if empty: never anything but the lab's
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("lab.etc_pki_kept", error=str(exc))
        (workdir / PKI_MARK).unlink()
    shutil.rmtree(workdir / "hosts", ignore_errors=True)
    log.info(
        "lab.teardown",
        workdir=str(workdir),
        stopped=sum(map(len, pids.values())),
        seconds=round(time.monotonic() - t0, 2),
    )
