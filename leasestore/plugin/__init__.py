"""The lock-manager plugin interface (modelled on libvirt's lock driver) and its backends."""

from leasestore.plugin.api import (
    AcquireFlags,
    Capability,
    ConfigUnsupported,
    LockBusy,
    LockDriver,
    LockManager,
    LockManagerError,
    OperationDenied,
    OperationInvalid,
    ResourceFlags,
    ResourceType,
    StateMismatch,
    load_driver,
)

__all__ = [
    "AcquireFlags", "Capability", "ConfigUnsupported", "LockBusy", "LockDriver", "LockManager",
    "LockManagerError", "OperationDenied", "OperationInvalid", "ResourceFlags", "ResourceType",
    "StateMismatch", "load_driver",
]
