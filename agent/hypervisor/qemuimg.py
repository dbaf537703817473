"""qemu-img as a subprocess: info, create, convert, resize, each bounded by a time-out.

CloudStack's Java agent runs qemu-img the same way (``QemuImg``, through its ``Script``
class with the command's ``wait`` as time-out). Here every run is a ``trio.run_process``:
the trio loop never waits on it, and a run that outlives its time-out is killed (SIGKILL:
a half-written image is removed by the caller anyway, so there is nothing to save).

Paths are always absolute: qemu-img reads ``nbd:``, ``json:`` and the like as protocols, and
an absolute path can be neither.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog
import trio
from attrs import frozen

log = structlog.get_logger("agent.qemuimg")

__all__ = ["INFO_TIMEOUT", "ImageInfo", "QemuImg", "QemuImgError"]

INFO_TIMEOUT = 60.0  # s: `qemu-img info` reads a header; a minute means the storage hangs
_STDERR_TAIL = 600  # characters of qemu-img's complaint kept in an error text


class QemuImgError(Exception):
    """qemu-img failed, timed out or is missing; the text says which, on what file, and
    qemu-img's own words."""


@frozen
class ImageInfo:
    """What ``qemu-img info`` says of an image (sizes in bytes)."""

    path: str
    format: str  # qcow2, raw...
    virtual_size: int
    actual_size: int | None
    backing_file: str | None  # as recorded in the image
    backing_format: str | None


async def _kill(process: trio.Process) -> None:
    process.kill()


def _absolute(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise QemuImgError(f"refusing a relative or invalid image path {path!r:.200}")
    return path


@frozen
class QemuImg:
    """``binary``: the qemu-img to run (``qemu-img``: found on PATH)."""

    binary: str = "qemu-img"

    async def run(self, args: Sequence[str], *, timeout: float, what: str) -> str:
        """``qemu-img <args>``; its stdout. QemuImgError on failure or time-out (killed)."""
        argv = [self.binary, *args]
        with trio.move_on_after(timeout) as scope:
            try:
                done = await trio.run_process(
                    argv,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    deliver_cancel=_kill,
                )
            except FileNotFoundError:
                raise QemuImgError(
                    f"{what}: {self.binary} is not installed on this host "
                    "(Debian/Ubuntu: apt-get install qemu-utils; EL: dnf install qemu-img)"
                ) from None
            except PermissionError as exc:
                raise QemuImgError(f"{what}: cannot run {self.binary}: {exc}") from None
        if scope.cancelled_caught:
            log.warning("qemu-img timed out and was killed", argv=argv, timeout=timeout)
            raise QemuImgError(
                f"{what}: qemu-img {args[0]} did not finish within {timeout:g}s and was "
                "killed; check that the storage answers (a hung NFS server?), or allow more "
                "time (the command's wait, or qemuimg.timeout in agent.properties)"
            )
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()
            if len(stderr) > _STDERR_TAIL:
                stderr = "..." + stderr[-_STDERR_TAIL:]
            raise QemuImgError(
                f"{what}: qemu-img {args[0]} failed (exit {done.returncode}): "
                f"{stderr or 'no message'}"
            )
        return done.stdout.decode(errors="replace")

    async def info(self, path: str, *, timeout: float = INFO_TIMEOUT) -> ImageInfo:
        """The image's format and sizes. ``-U``: a template is open in running VMs."""
        out = await self.run(
            ["info", "-U", "--output=json", _absolute(path)],
            timeout=timeout,
            what=f"reading image {path}",
        )
        try:
            data = json.loads(out)
            return ImageInfo(
                path=path,
                format=str(data["format"]),
                virtual_size=int(data["virtual-size"]),
                actual_size=int(data["actual-size"]) if "actual-size" in data else None,
                backing_file=data.get("backing-filename"),
                backing_format=data.get("backing-filename-format"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise QemuImgError(
                f"reading image {path}: unexpected qemu-img info output ({exc})"
            ) from None

    async def create(
        self,
        path: str,
        fmt: str,
        size: int,
        *,
        timeout: float,
        backing: str | None = None,
        backing_format: str | None = None,
        preallocation: str | None = None,
    ) -> None:
        """A new image of ``size`` bytes; with ``backing``, an overlay of that image."""
        args = ["create", "-q", "-f", fmt]
        if preallocation:
            args += ["-o", f"preallocation={preallocation}"]
        if backing is not None:
            args += ["-b", _absolute(backing), "-F", backing_format or "qcow2"]
        args += [_absolute(path), str(size)]
        await self.run(args, timeout=timeout, what=f"creating {path}")

    async def convert(
        self,
        source: str,
        source_format: str,
        dest: str,
        dest_format: str,
        *,
        timeout: float,
        preallocation: str | None = None,
    ) -> None:
        """A full copy of ``source`` (its backing chain flattened) as ``dest``."""
        args = ["convert", "-U", "-f", source_format, "-O", dest_format]
        if preallocation:
            args += ["-o", f"preallocation={preallocation}"]
        args += [_absolute(source), _absolute(dest)]
        await self.run(args, timeout=timeout, what=f"copying {source} to {dest}")

    async def resize(self, path: str, fmt: str, size: int, *, timeout: float) -> None:
        """Grow ``path`` to ``size`` bytes (virtual)."""
        args = ["resize", "-q", "-f", fmt, _absolute(path), str(size)]
        await self.run(args, timeout=timeout, what=f"resizing {path}")
