"""Shared test setup.

Without a GPU the Triton kernels run in Triton's interpreter, which is chosen when a kernel is
decorated: TRITON_INTERPRET must be set before any kernel module is imported, so it is set here,
before the tests import cachekern.kernels.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

# The benchmark tools are tested too (`import benchmarks...`): the checkout goes on the path
# last, so that `import cachekern` still finds the installed package first.
sys.path.append(str(Path(__file__).resolve().parents[1]))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
