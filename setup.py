"""Build of cachekern and its native extension cachekern.store._C.

Build requirements are setuptools and pybind11 only: torch is not imported here and the
extension does not link libtorch (it exchanges raw pointers and stream handles with torch), so
`pip install .` works with build isolation and one build serves any installed torch.

Build flags (environment variables):
    CACHEKERN_SKIP_CUDA_BUILD=1   build the CPU-only engine even when a CUDA toolkit is present
    CACHEKERN_FORCE_CUDA=1        fail unless a CUDA toolkit is found
    CUDA_HOME=/path/to/cuda       where the toolkit lives (otherwise: nvcc on PATH, then
                                  /usr/local/cuda)

With a toolkit the CUDA runtime is linked statically (libcudart_static.a), so the module loads on
machines without libcudart.so, and without a driver it falls back to plain host memory.
"""

import os
import shutil
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The CUDA toolkit root that holds the runtime headers and the static runtime, or None."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "include" / "cuda_runtime_api.h").is_file() and find_cudart_static(root):
            return root
    return None


def find_cudart_static(root: Path):
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        lib = root / sub / "libcudart_static.a"
        if lib.is_file():
            return lib
    return None


def extension():
    define_macros = []
    include_dirs = ["csrc"]
    extra_link_args = []
    if _flag("CACHEKERN_SKIP_CUDA_BUILD"):
        print("cachekern: CACHEKERN_SKIP_CUDA_BUILD is set; building the CPU-only block cache")
    else:
        cuda_home = find_cuda_home()
        if cuda_home is None:
            if _flag("CACHEKERN_FORCE_CUDA"):
                sys.exit("cachekern: CACHEKERN_FORCE_CUDA=1 but no CUDA toolkit was found "
                         "(set CUDA_HOME to a toolkit with include/cuda_runtime_api.h and "
                         "libcudart_static.a)")
            print("cachekern: no CUDA toolkit found (CUDA_HOME, nvcc on PATH, /usr/local/cuda); "
                  "building the CPU-only block cache")
        else:
            print(f"cachekern: building the block cache with CUDA from {cuda_home}")
            define_macros.append(("CACHEKERN_WITH_CUDA", "1"))
            include_dirs.append(str(cuda_home / "include"))
            extra_link_args += [str(find_cudart_static(cuda_home)), "-ldl", "-lrt", "-lpthread"]
    return Pybind11Extension(
        "cachekern.store._C",
        SOURCES,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_link_args=extra_link_args,
        cxx_std=17,
    )


class BuildExtension(build_ext):
    """Always compiles: setuptools would otherwise relink objects left in the in-tree build/ by an
    earlier build with other flags (a CUDA build reused for CACHEKERN_SKIP_CUDA_BUILD=1, say),
    since it compares only the sources' times with the extension's."""

    def finalize_options(self):
        super().finalize_options()
        self.force = True


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
