"""`cachekern.build_info()`: what was built, what loaded, and which runtime it runs on."""

import torch

from cachekern.store import _native
from cachekern._version import __version__


def _triton_version():
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def build_info() -> dict:
    """A dict describing this installation, for bug reports and for tests.

    Keys: ``version``; ``native_loaded`` and ``native_error`` (why ``cachekern.store._C`` failed to
    load, else None); ``built_with_cuda`` and ``cuda_runtime_built`` (the CUDA runtime the
    extension was compiled against, e.g. "13.0", None without CUDA); ``cuda_usable`` (a driver and
    device are usable by the extension now) and ``cuda_unusable_reason``; ``pinned_host_memory``;
    ``compiler``; runtime ``torch``, ``torch_cuda``, ``triton``, ``cuda_available``, ``device_name``.
    """
    info = {
        "version": __version__,
        "native_loaded": _native.native is not None,
        "native_error": _native.load_error,
        "built_with_cuda": None,
        "cuda_runtime_built": None,
        "cuda_usable": False,
        "cuda_unusable_reason": None,
        "pinned_host_memory": False,
        "compiler": None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if _native.native is not None:
        native = _native.native.build_info()
        version = native["cuda_runtime_version"]
        info.update(
            built_with_cuda=native["cuda"],
            cuda_runtime_built=f"{version // 1000}.{version % 1000 // 10}" if version else None,
            cuda_usable=native["cuda_usable"],
            cuda_unusable_reason=native["cuda_unusable_reason"] or None,
            pinned_host_memory=native["cuda_usable"],
            compiler=native["compiler"],
        )
    return info
