"""The committed stubs are exactly what the pinned generator makes of our .proto files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
GENERATED = ROOT / "otelbridge" / "containerd" / "_gen"


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) missing"
)
def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for fresh in sorted(tmp_path.glob("*_pb2.py*")):
        committed = GENERATED / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `make protos` and commit the result"
        )
