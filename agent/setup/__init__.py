"""``kvm-agent setup``: configuring this host out of band (as root, or under a ``--root``).

* :mod:`~agent.setup.libvirtd` — ``setup --secure-libvirtd``: its steps;
* :mod:`~agent.setup.run` — one run of setup: reading, diffing and replacing system files,
  running or printing commands, and the summary of what changed;
* :mod:`~agent.setup.confedit` — comment-keeping ``key = value`` edits.
"""
