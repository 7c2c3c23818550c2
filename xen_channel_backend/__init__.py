"""xen-channel-backend: Xen PV channels for libvirt hosts.

Nothing is imported eagerly: the libvirt hooks import this package on every
call and must start fast.  The public API for tools (see docs/metadata.md,
"Finding a channel") is re-exported lazily: ``xen_channel_backend.channels``
imports :mod:`xen_channel_backend.api` on first use.
"""

# Not "from typing import TYPE_CHECKING": importing typing costs the hooks
# milliseconds on every call; type checkers treat this name the same way.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = ["ChannelInfo", "channels", "remote_channels"]

if TYPE_CHECKING:
    from .api import ChannelInfo as ChannelInfo
    from .api import channels as channels
    from .api import remote_channels as remote_channels


def __getattr__(name: str) -> object:
    # PEP 562: resolve the API names on first access, not at import time.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
