from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from threedsr_ns.llff import prepare_llff

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FERN = SHARED_DATA / "llff" / "fern"


def load_script(path: Path, name: str, monkeypatch):
    """A script of scripts/ as a module, registered in sys.modules for the test only (dataclasses resolve their
    annotations through it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_fern(tmp_path_factory) -> Path:
    """Real LLFF fern, GT 128x96 and LR 32x24 (x4), as scripts/prepare_llff.py writes it."""
    if not FERN.exists():
        pytest.skip(f"{FERN} not found: the tests read LLFF fern from ../shared/data")
    out = tmp_path_factory.mktemp("data") / "fern"
    prepare_llff(FERN, out, scale=4, gt_width=128)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a box whose cores are shared with other jobs
    OpenMP oversubscription made the CPU rasterizer and the tiny models 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
