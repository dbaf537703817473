"""Values the management server sets on the host (SetHostParamsCommand), over agent.properties.

The MS sends SetHostParamsCommand at every connect, and again to every host when an operator
changes one of its settings. What matters to a KVM agent is ``migratewait`` (the global
``migrate.wait``, seconds): the Java agent makes it its ``vm.migrate.wait``. Here it wins
over agent.properties until the agent restarts, a SIGHUP reload included: the overrides are
laid over every configuration the agent installs, in the same single swap, so a migration
(or any command) sees one configuration, never agent.properties' value for one key and the
MS's for another. Nothing is written to agent.properties.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import structlog
from attrs import frozen

from agent.config import AgentConfig

log = structlog.get_logger("agent.hostparams")

# Keys the MS sends that mean nothing to this agent: the virtual router's aggregation timeout
# (no router runs here), Tungsten Fabric, command reconciliation (not implemented).
NOT_USED = frozenset(
    {
        "router.aggregation.command.each.timeout",
        "tungsten.plugin.enable",
        "reconcile.commands.enabled",
    }
)


def _seconds(key: str, raw: str) -> int:
    """A number of seconds; 0 or less means no limit (-1), as the Java agent treats them."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{key}={raw!r:.40} is not a whole number of seconds") from None
    return value if value > 0 else -1


# MS key -> (AgentConfig attribute, the agent.properties key it overrides, parser).
APPLIED: dict[str, tuple[str, str, Callable[[str, str], Any]]] = {
    "migratewait": ("migrate_wait", "vm.migrate.wait", _seconds),
}


@frozen
class Applied:
    """What one SetHostParamsCommand changed: ``set`` (agent.properties key -> value),
    ``ignored`` keys, and ``errors`` (one text per value refused; the current one stays)."""

    set: dict[str, Any]
    ignored: list[str]
    errors: list[str]


class HostParams:
    """The MS's overrides, and the one place that lays them over a configuration."""

    def __init__(
        self, current: Callable[[], AgentConfig], install: Callable[[AgentConfig], None]
    ) -> None:
        self._current = current
        self._install = install
        self._overrides: dict[str, Any] = {}  # AgentConfig attribute -> value

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self._overrides)

    def effective(self, config: AgentConfig) -> AgentConfig:
        """``config`` (as read from agent.properties) with the MS's values over it."""
        return attrs.evolve(config, **self._overrides) if self._overrides else config

    def shadowed(self, config: AgentConfig) -> dict[str, Any]:
        """agent.properties keys whose value in ``config`` the MS's overrides hide:
        key -> {"file": ..., "in_force": ...} (for the reload's log)."""
        hidden = {}
        for attr, prop, _parse in APPLIED.values():
            if attr in self._overrides and getattr(config, attr) != self._overrides[attr]:
                hidden[prop] = {"file": getattr(config, attr), "in_force": self._overrides[attr]}
        return hidden

    def apply(self, params: Mapping[str, str]) -> Applied:
        """Take the MS's values and install the resulting configuration at once."""
        changed: dict[str, Any] = {}
        ignored: list[str] = []
        errors: list[str] = []
        for key, raw in params.items():
            rule = APPLIED.get(key)
            if rule is None:
                ignored.append(key)
                continue
            attr, prop, parse = rule
            if not isinstance(raw, str):
                errors.append(f"{key} is not a string")
                continue
            try:
                changed[attr] = parse(key, raw)
            except ValueError as exc:
                errors.append(f"{exc}; {prop} stays {getattr(self._current(), attr)}")
        self._overrides.update(changed)
        if changed:
            self._install(self.effective(self._current()))
        set_ = {prop: changed[attr] for attr, prop, _f in APPLIED.values() if attr in changed}
        if set_ or ignored or errors:
            log.info(
                "host parameters from the management server",
                set=set_,
                ignored=[k for k in ignored if k in NOT_USED] or None,
                unknown=[k for k in ignored if k not in NOT_USED] or None,
                errors=errors or None,
            )
        return Applied(set=set_, ignored=ignored, errors=errors)
