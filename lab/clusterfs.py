"""The lab's shared pool seen as a cluster filesystem by its libvirtds (an LD_PRELOAD shim).

libvirt 9.0 live-migrates a VM only if each disk is on shared storage: it reads the disk
directory's ``statfs`` type, and ext4 (the lab's shared pool is a bind mount of one
directory) is "Migration without shared storage is unsafe". It has no setting to declare a
path shared (``shared_filesystems`` came later), and a real deployment never needs one
(NFS, GFS2, OCFS2 are recognised). So the lab's libvirtd runs with ``clusterfs.c``
preloaded, which reports GFS2 for the listed paths only; :func:`preload_env` is added to the
lab's libvirtd environment and nowhere else: the product never sets LD_PRELOAD, nor
VIR_MIGRATE_UNSAFE.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).with_name("clusterfs.c")
ENV_VAR: Final = "KVMLAB_CLUSTER_FS"  # the paths, colon-separated (read by the shim)
GFS2_MAGIC: Final = 0x01161970  # what the shim reports; libvirt's virFileIsClusterFS knows it
_GCC_TIMEOUT: Final = 120


class ShimBuildError(RuntimeError):
    """gcc could not build the shim."""


def build_shim(directory: Path) -> Path:
    """``libkvmlab-clusterfs-<source hash>.so`` in ``directory``, built unless there;
    older builds are removed."""
    stamp = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    shim = directory / f"libkvmlab-clusterfs-{stamp}.so"
    if shim.exists():
        return shim
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        out = Path(tmp) / shim.name
        argv = ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"]
        argv += ["-o", str(out), str(SOURCE), "-ldl"]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_GCC_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise ShimBuildError("gcc is missing: it builds the lab's clusterfs shim") from None
        if done.returncode != 0:
            raise ShimBuildError(f"gcc {SOURCE.name} failed: {done.stderr.strip()}")
        out.chmod(0o755)
        os.replace(out, shim)
    for old in directory.glob("libkvmlab-clusterfs-*.so"):
        if old != shim:
            old.unlink(missing_ok=True)
    return shim


def preload_env(shim: Path, paths: Sequence[str]) -> dict[str, str]:
    """The variables that make a process see ``paths`` (absolute, no trailing slash) on a
    cluster filesystem."""
    for path in paths:
        if not path.startswith("/") or path.endswith("/") or ":" in path:
            raise ValueError(f"{path!r}: an absolute path without ':' or a trailing '/'")
    return {"LD_PRELOAD": str(shim), ENV_VAR: ":".join(paths)}
