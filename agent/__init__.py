"""The KVM host agent: a trio daemon that serves CloudStack's management servers."""

__version__ = "0.1.0"
