"""Exceptions shared by the native and the pure-Python block-cache engines."""

from cachekern import _native

if _native.native is not None:
    CapacityError = _native.native.CapacityError
else:
    class CapacityError(MemoryError):
        """Neither the device tier nor the host tier can hold an entry; the message names sizes."""
