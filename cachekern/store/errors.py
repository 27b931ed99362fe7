"""Exceptions shared by the native and the pure-Python block-cache engines."""


class CapacityError(MemoryError):
    """Neither the device tier nor the host tier can hold an entry; the message names the sizes."""
