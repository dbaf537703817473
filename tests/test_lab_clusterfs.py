"""The clusterfs shim (lab/clusterfs.c): GFS2 for the listed paths, nothing else changed.

Plain processes, no lab: the libvirtd side (a live migration with a disk on the shared pool
and no --unsafe; refused without the shim) is in tests/test_lab_storage.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.clusterfs import ENV_VAR, GFS2_MAGIC, build_shim, preload_env

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

# statfs/statfs64/fstatfs/fstatfs64 through libc: f_type of each path (-1 when it fails),
# and what a child process inherits of the preload.
PROBE = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(512)
def f_type(rc):
    return int.from_bytes(buf.raw[:8], "little") if rc == 0 else -1
out = {}
for path in sys.argv[1:]:
    p = path.encode()
    row = [f_type(libc.statfs(p, buf)), f_type(libc.statfs64(p, buf))]
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        row += [-1, -1]
    else:
        row += [f_type(libc.fstatfs(fd, buf)), f_type(libc.fstatfs64(fd, buf))]
        os.close(fd)
    out[path] = row
child = subprocess.run(["env"], capture_output=True, text=True).stdout
out["child"] = [line for line in child.splitlines() if "PRELOAD" in line or "CLUSTER" in line]
print(json.dumps(out))
"""


def probe(paths: list[str], extra_env: dict[str, str]) -> dict[str, list[object]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *paths],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **extra_env},
    )
    result: dict[str, list[object]] = json.loads(done.stdout)
    return result


def test_listed_paths_are_gfs2_others_unchanged(tmp_path: Path) -> None:
    shim = build_shim(tmp_path / "build")
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "disk").write_bytes(b"x")
    (tmp_path / "pool-other").mkdir()
    (tmp_path / "link").symlink_to(pool)
    paths = [
        str(pool),
        str(pool / "sub"),
        str(pool / "disk"),
        str(tmp_path / "link" / "disk"),  # resolved: the pool's
        str(tmp_path / "pool-other"),  # a prefix by its name only
        str(tmp_path),
        str(pool / "missing"),
    ]
    real = probe(paths, {})
    seen = probe(paths, preload_env(shim, [str(pool)]))
    gfs2 = [GFS2_MAGIC] * 4
    for path in paths[:4]:
        assert real[path] != gfs2 and seen[path] == gfs2, path
    for path in paths[4:6]:
        assert seen[path] == real[path] != gfs2, path
    assert seen[paths[6]] == real[paths[6]] == [-1] * 4  # errors pass through
    # Children of the preloaded process (QEMU, for libvirtd) start without it.
    assert real["child"] == seen["child"] == []


def test_built_once_per_source(tmp_path: Path) -> None:
    shim = build_shim(tmp_path)
    mtime = shim.stat().st_mtime_ns
    assert build_shim(tmp_path) == shim and shim.stat().st_mtime_ns == mtime
    stale = tmp_path / "libkvmlab-clusterfs-000000000000.so"
    stale.write_bytes(b"old")
    shim.unlink()
    assert build_shim(tmp_path) == shim and shim.exists() and not stale.exists()


def test_preload_env() -> None:
    env = preload_env(Path("/x/shim.so"), ["/mnt/a", "/mnt/b"])
    assert env == {"LD_PRELOAD": "/x/shim.so", ENV_VAR: "/mnt/a:/mnt/b"}
    for bad in ("relative", "/trailing/", "/with:colon"):
        with pytest.raises(ValueError):
            preload_env(Path("/x/shim.so"), [bad])
