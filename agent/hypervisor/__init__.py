"""The hypervisor room: the only place that imports libvirt.

Everything that leaves it is in our own types (HypervisorError, DomainState, DomainEvent,
HostFacts): daemon, link and handlers never see libvirt's integers or exceptions.
"""
