"""The two-host lab with a LabCloud, for the benchmarks that run on it: built, then torn
down whatever happens."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from lab.ca import LAB_CA_DIRNAME, LabCA
from lab.cloud import LabCloud
from lab.hosts import DEFAULT_WORKDIR, Lab

WORKDIR = DEFAULT_WORKDIR


@asynccontextmanager
async def lab_cloud(name: str) -> AsyncIterator[tuple[Lab, LabCloud]]:
    """The lab and a cloud (no MS, no agent yet) in a scratch directory named after ``name``."""
    ca = LabCA.load_or_create(WORKDIR / LAB_CA_DIRNAME)
    lab = await trio.to_thread.run_sync(lambda: Lab.create(WORKDIR, ca=ca))
    base = Path(tempfile.mkdtemp(prefix=f"kvm-agent-bench-{name}-"))
    cloud = LabCloud(lab, base, ca)
    try:
        yield lab, cloud
    finally:
        cloud.close()
        await trio.to_thread.run_sync(lab.teardown)
        shutil.rmtree(base, ignore_errors=True)
