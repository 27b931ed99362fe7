"""The installation: what was built and loaded. CI sets the CACHEKERN_EXPECT_* variables so a
build that silently lost the extension or its CUDA part fails instead of passing on a fallback."""

import json
import os
import subprocess
import sys

import cachekern


def test_build_info_has_every_field():
    info = cachekern.build_info()
    for key in ("version", "native_loaded", "native_error", "built_with_cuda", "cuda_runtime_built",
                "cuda_usable", "torch", "torch_cuda", "triton", "cuda_available", "device_name"):
        assert key in info, key
    assert info["version"] == cachekern.__version__
    if info["native_loaded"]:
        assert info["native_error"] is None
        assert isinstance(info["built_with_cuda"], bool)
    else:
        assert info["native_error"]


def test_expected_build():
    info = cachekern.build_info()
    if os.environ.get("CACHEKERN_EXPECT_NATIVE") == "1":
        assert info["native_loaded"], info["native_error"]
    expect_cuda = os.environ.get("CACHEKERN_EXPECT_CUDA_BUILD")
    if expect_cuda is not None:
        assert info["built_with_cuda"] is (expect_cuda == "1"), info


def test_info_command_prints_json(tmp_path):
    # Run outside the checkout: `python -m` puts the working directory on sys.path, and the
    # source tree is not an installed package (no extension, no cachekern.kernels).
    out = subprocess.run([sys.executable, "-m", "cachekern", "info"], check=True, cwd=tmp_path,
                         capture_output=True, text=True).stdout
    assert json.loads(out)["version"] == cachekern.__version__


def test_info_survives_a_reader_that_stops_at_its_match():
    """`cachekern info | grep -q ...` under pipefail (.ci/run does this): the report goes out
    in one write, so a reader that closes after its first line breaks no pipe, even with
    Python's output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    writer = subprocess.Popen([sys.executable, "-m", "cachekern", "info"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert writer.stdout.readline().strip() == b"{"
    writer.stdout.close()            # as grep -q does on its match
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err.decode()
