"""Live migration: the engine (jobs, the libvirt call, the outcome on both hosts), the monitor
of a running job, and libvirt's failure texts turned into what an operator can act on."""
