"""xen-channel-backend: Xen PV channels for libvirt hosts.

Nothing is imported eagerly: the libvirt hooks import this package on every
call and must start fast.
"""

__version__ = "0.1.0"
