"""The operators' view of the agent: what it tells, and where they read it.

* :mod:`~agent.observe.observer` — the hooks the agent calls (session up/down, command
  done, migration, failover, libvirt, secured, certificate) and how a task finds its
  agent's observer; a no-op outside an agent;
* :mod:`~agent.observe.recorder` — the observer an agent installs: the latest facts, for
  status, passed on to the metrics when they are on;
* :mod:`~agent.observe.metrics` — Prometheus metrics on ``metrics.listen`` (imported only
  when it is set: the only user of ``prometheus_client``);
* :mod:`~agent.observe.status` — the status document, served on <state.dir>/status.sock;
* :mod:`~agent.observe.report` — ``kvm-agent status``: reads it, prints it, exit code.
"""
