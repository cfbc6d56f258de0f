"""The benchmark scripts run end to end at smoke size (their numbers are not checked here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_toy_table_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_table.py"), "--out", str(tmp_path), "--smoke"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "toy_table.json").read_text())
    assert [r["variant"] for r in summary["rows"]] == ["CLIPSeg baseline", "PartCLIPSeg (no attention losses)",
                                                       "PartCLIPSeg + L_sep + L_enh"]
    table = (tmp_path / "toy_table.md").read_text()
    assert table.count("\n") == 5 and "| Oracle-Obj Seen |" in table.splitlines()[0]
    for row in summary["rows"]:
        assert Path(row["model"], "model.safetensors").is_file()


def test_bench_scale_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--smoke", "--out",
                           str(tmp_path / "scale.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "scale.json").read_text())
    (run,) = result["runs"]
    assert run["engine"] == "local" and run["processed"] == result["images"] == 6 and run["images_per_s"] > 0
