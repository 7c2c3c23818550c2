"""The guest side: ``xen-channel-guest`` and the appliers it runs.

This subpackage installs and imports alone, on a guest that has neither
lxml nor libvirt: it uses the standard library and the few modules both
ends share (:data:`SHARED_MODULES`), nothing of the dom0 side.  The guest
Debian package ships exactly :data:`GUEST_FILES`; tests/test_guest_agent.py
copies those files alone into an empty directory and runs the agent there.
"""

#: Modules of the parent package that the guest side uses: the wire
#: protocol both ends speak, and the error, model and atomic-write helpers
#: the protocol and the appliers are built on.
SHARED_MODULES = ("__init__", "errors", "model", "atomic", "protocol")

#: Every file, relative to the package directory's parent, that a guest needs.
GUEST_FILES = (
    *(f"xen_channel_backend/{name}.py" for name in SHARED_MODULES),
    "xen_channel_backend/guest/__init__.py",
    "xen_channel_backend/guest/__main__.py",
    "xen_channel_backend/guest/agent.py",
    "xen_channel_backend/guest/appliers.py",
)
