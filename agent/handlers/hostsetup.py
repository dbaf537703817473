"""What the MS sets on a host at every connect: the system-VM ssh keys, host parameters.

Both are sent asynchronously; the MS reads neither answer, so a failure is logged here.

ModifySshKeysCommand: the keys go where CloudStack's KVM agent writes them (ssh.keys.dir,
/root/.ssh: ``id_rsa.pub.cloud``, ``id_rsa.cloud``), the private one 0600 from its first byte
and replaced atomically; the keys are never logged nor echoed in an answer.
SetHostParamsCommand: agent.hostparams (``migratewait`` overrides vm.migrate.wait until the
agent restarts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog
import trio

from agent.config import AgentConfig
from agent.fsutil import atomic_write
from agent.handlers import handler
from agent.handlers.context import HostParamsControl
from protocol.messages.network import ModifySshKeysCommand, SetHostParamsCommand
from protocol.model import Answer, Message

log = structlog.get_logger("agent.hostsetup")

PUBLIC_KEY_FILE = "id_rsa.pub.cloud"
PRIVATE_KEY_FILE = "id_rsa.cloud"


class HostSetupContext(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def host_params(self) -> HostParamsControl: ...


def write_ssh_keys(directory: Path, public: str | None, private: str | None) -> list[str]:
    """Write the keys given; returns what went wrong (no key material in any text)."""
    problems: list[str] = []
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return [f"cannot create {directory}: {exc.strerror}"]
    for what, key, name, mode in (
        ("public", public, PUBLIC_KEY_FILE, 0o644),
        ("private", private, PRIVATE_KEY_FILE, 0o600),
    ):
        path = directory / name
        if not key:
            problems.append(f"the command carries no {what} key; {path} left as it was")
            continue
        try:
            atomic_write(path, key.encode(), mode=mode)
        except OSError as exc:
            problems.append(f"cannot write the {what} key to {path}: {exc.strerror}")
    return problems


@handler(ModifySshKeysCommand)
async def modify_ssh_keys(cmd: ModifySshKeysCommand, ctx: HostSetupContext) -> Message:
    directory = ctx.config.ssh_keys_dir
    problems = await trio.to_thread.run_sync(write_ssh_keys, directory, cmd.pub_key, cmd.prv_key)
    if problems:
        log.warning("system VM ssh keys not (all) written", problems=problems)
        return Answer(result=False, details="; ".join(problems))
    log.info("system VM ssh keys written", directory=str(directory))
    return Answer(result=True)


@handler(SetHostParamsCommand)
async def set_host_params(cmd: SetHostParamsCommand, ctx: HostSetupContext) -> Message:
    applied = ctx.host_params.apply(cmd.params or {})
    if applied.errors:
        return Answer(result=False, details="; ".join(applied.errors))
    return Answer(result=True)
