"""One run of ``kvm-agent setup``: system files read under a root, edits shown as diffs (dry
run) or written atomically keeping their mode, commands run (only on the live system, else
printed), and the summary of what changed, what ran and what is left to do by hand."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from agent.setup import confedit


class SetupError(Exception):
    """A precondition is not met or a step failed; the message says which."""


class SetupRun:
    """``header`` is the comment put above lines a run appends to a configuration file."""

    def __init__(self, *, root: Path, dry_run: bool, out: TextIO, header: str) -> None:
        self.header = header
        self.root = Path(os.path.abspath(root))
        self.live = self.root == Path("/")  # only then are system commands run
        self.dry_run = dry_run
        self.out = out
        self.changed: list[str] = []  # files and links changed (dry run: would be)
        self.ran: list[str] = []  # commands run (dry run: would be)
        self.manual: list[str] = []  # left to the operator

    # --- helpers ----------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(message, file=self.out)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read_system_file(self, rel: str, *, required: bool) -> bytes | None:
        path = self.path(rel)
        if not self.live and path.exists():
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(Path(os.path.realpath(self.root))):
                raise SetupError(f"{path} leads outside --root {self.root} (to {real})")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if required:
                raise SetupError(
                    f"{path} does not exist (is libvirt's daemon installed?)"
                ) from None
            return None
        except OSError as exc:
            raise SetupError(f"cannot read {path}: {exc.strerror}") from None

    def write(self, path: Path, old: bytes | None, new: bytes) -> None:
        if old == new:
            return
        if self.dry_run:
            self.out.write(confedit.unified_diff(path, old, new))
        else:
            confedit.replace_file(path, new)
            self.say(f"updated {path}")
        self.changed.append(str(path))

    def edit(
        self,
        path: Path,
        old: bytes | None,
        values: Mapping[str, str],
        *,
        separator: str = confedit.LIBVIRT_SEPARATOR,
        notes: Mapping[str, str] | None = None,
    ) -> None:
        text = (old or b"").decode("utf-8", "surrogateescape")
        new = confedit.set_values(
            text, values, separator=separator, header=self.header, notes=notes
        )
        self.write(path, old, new.encode("utf-8", "surrogateescape"))

    def command(self, argv: Sequence[str], why: str) -> None:
        cmd = shlex.join(argv)
        if not self.live:
            self.manual.append(cmd)
            self.say(f"not run (--root is not /): {cmd}    # {why}")
            return
        if self.dry_run:
            self.ran.append(cmd)
            self.say(f"would run: {cmd}    # {why}")
            return
        self.say(f"running: {cmd}")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"{cmd} failed: {exc}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise SetupError(f"{cmd} failed (exit {proc.returncode}): {detail}")
        self.ran.append(cmd)

    def query(self, *argv: str) -> subprocess.CompletedProcess[str] | None:
        """A read-only command on the live system (dry runs too); None when not possible."""
        if not self.live or shutil.which(argv[0]) is None:
            return None
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def query_out(self, *argv: str) -> str:
        proc = self.query(*argv)
        return proc.stdout.strip() if proc is not None else ""

    # --- the steps --------------------------------------------------------------------
