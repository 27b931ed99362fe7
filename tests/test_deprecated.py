"""Names from before the re-shelving stay importable, each with a DeprecationWarning."""

import subprocess
import sys

import pytest

import cachekern


def test_cache_handle_is_the_teacache_handle():
    with pytest.warns(DeprecationWarning, match="TeaCacheHandle"):
        assert cachekern.CacheHandle is cachekern.TeaCacheHandle
    with pytest.raises(AttributeError, match="no_such_name"):
        cachekern.no_such_name


def test_triton_kernels_is_the_kernels_package_with_its_old_submodules():
    # A fresh interpreter: the warning is given when the module is first imported.
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import cachekern.triton_kernels\nexcept DeprecationWarning as w:\n"
            "    print('warned:', w)\n"
            "warnings.simplefilter('ignore', DeprecationWarning)\n"
            "import cachekern.kernels as k, cachekern.triton_kernels as old\n"
            "from cachekern.triton_kernels.residual_reuse import residual_reuse\n"
            "from cachekern.triton_kernels.modulated_distance import modulate\n"
            "assert old.residual_capture is k.residual_capture\n"
            "assert residual_reuse is k.residual_reuse and modulate is k.modulate\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "warned: cachekern.triton_kernels is deprecated" in out.stdout
    assert out.stdout.rstrip().endswith("ok")


@pytest.mark.parametrize("method", ["fit_scale_shift", "train_scale_shift"])
def test_profile_methods_warn_and_call_the_functions(method):
    prof = cachekern.Profile("M", ["a"], [[0.1, 0.2]], [1.0, 0.5])
    with pytest.warns(DeprecationWarning, match=f"cachekern.{method}"):
        with pytest.raises(TypeError, match="run: expected a callable"):   # the function's check
            getattr(prof, method)(object(), run=5)
