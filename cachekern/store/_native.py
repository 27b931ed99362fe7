"""Loads the native extension cachekern.store._C defensively and reports how it was built.

torch is imported first (the CUDA runtime inside the extension and torch's share the driver's
primary context; importing torch first keeps its initialisation order the usual one). A failure
to load is recorded, not raised: the pure-Python fallback engine keeps every API working.
"""

import os

import torch  # noqa: F401  (imported before the extension on purpose)

native = None
load_error = None

if os.environ.get("CACHEKERN_DISABLE_NATIVE", "") in ("1", "true", "yes"):
    load_error = "disabled by CACHEKERN_DISABLE_NATIVE"
else:
    try:
        from cachekern.store import _C as native  # noqa: F401  (the module's interface)
    except ImportError as exc:  # not built, or built for another Python
        load_error = f"{type(exc).__name__}: {exc}"
