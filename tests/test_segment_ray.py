"""``segment --engine ray`` on a local Ray (``ray.init(num_cpus=2)``, no network): the same bytes as
the local engine, a worker killed on its first batch still yields every output exactly once, and
``--resume`` after an interrupted job processes only the missing images."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.data")

from conftest import make_toy_image_tree, read_tree  # noqa: E402
from partclipseg.cli import main  # noqa: E402
from partclipseg.engines.ray_engine import SegmentWorker, run_ray  # noqa: E402
from partclipseg.segment_job import SegmentOptions  # noqa: E402

PARTS = "dog's head, dog's leg, cat's head"
pytestmark = pytest.mark.slow  # a local Ray cluster and one model per actor: 10-70 s per test on 2 shared cores


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_job(tmp_path_factory, model_dir):
    """The toy image tree and the local engine's output of it."""
    root = tmp_path_factory.mktemp("toy")
    inputs = make_toy_image_tree(root / "images")
    args = ["segment", *inputs, "--model", str(model_dir), "--parts", PARTS, "--batch-size", "3"]
    assert main([*args, "--out", str(root / "local")]) == 1  # the corrupt image fails
    return inputs, args, read_tree(root / "local"), root


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_ray_engine_writes_the_local_engines_bytes_to_a_pyarrow_uri(local_ray, toy_job, capsys):
    inputs, args, expected, root = toy_job
    capsys.readouterr()
    # the output goes through pyarrow's filesystem layer (the path s3:// and gs:// outputs take)
    assert main([*args, "--out", (root / "ray").as_uri(), "--engine", "ray", "--workers", "2"]) == 1
    summary = _summary(capsys)
    assert summary["processed"] == 24 and summary["failed"] == 1 and summary["engine"] == "ray"
    got = read_tree(root / "ray")
    assert sorted(got) == sorted(expected) and len(got) == 24 * 3 + 2
    assert [k for k in got if got[k] != expected[k]] == []


class CrashOnceWorker(SegmentWorker):
    """Writes the first item of its first batch, notes that JSON's inode, then dies (once per job)."""

    marker: Path  # set on the class before the job; exists until the first crash

    def process(self, items):
        try:
            os.rename(self.marker, self.marker.with_suffix(".claimed"))  # one actor, once
        except FileNotFoundError:
            return super().process(items)
        first = self.processor.process(items[:1], skip_complete=True)
        assert first[0]["status"] == "ok"
        json_file = Path(self.processor.store.local_path(f"{items[0].name}.json"))
        self.marker.with_suffix(".crashed").write_text(json.dumps({items[0].name: json_file.stat().st_ino}))
        os._exit(1)


def test_a_killed_worker_still_yields_every_output_exactly_once(local_ray, toy_job, model_dir, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    inputs, _, expected, _ = toy_job
    CrashOnceWorker.marker = tmp_path / "crash.marker"
    CrashOnceWorker.marker.write_text("crash on the first batch")
    options = SegmentOptions(classes=("dog's head", "dog's leg", "cat's head"), model=str(model_dir), batch_size=3)
    report = run_ray(inputs, str(tmp_path / "out"), options, resume=False, log=lambda m: None, progress=False,
                     workers=1, worker_class=CrashOnceWorker)
    crashed = json.loads(CrashOnceWorker.marker.with_suffix(".crashed").read_text())  # it did die
    assert report.processed == 24 and report.failed == 1
    got = read_tree(tmp_path / "out")
    assert sorted(got) == sorted(expected) and [k for k in got if got[k] != expected[k]] == []
    (name, inode), = crashed.items()
    assert (tmp_path / "out" / f"{name}.json").stat().st_ino == inode  # not written a second time


def test_resume_after_an_interrupted_job_processes_only_the_missing_images(local_ray, toy_job, capsys, tmp_path):
    inputs, args, expected, root = toy_job
    out = tmp_path / "out"
    shutil.copytree(root / "local", out)
    # the state a kill leaves: some images without outputs, some with a label map but no JSON, a temp file
    missing = ["in1/a.jpg", "deep/1/2/c.bmp", "n/04.webp", "in2/x/img.jpg"]
    for name in missing[:2]:
        for path in out.glob(f"{name}.*"):
            path.unlink()
    for name in missing[2:]:
        (out / f"{name}.json").unlink()
    (out / "n" / ".05.tif.labels.png.abc123.tmp").write_bytes(b"half")
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if not p.name.startswith("partclipseg-")}
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--engine", "ray", "--workers", "1", "--resume"]) == 1
    summary = _summary(capsys)
    assert summary["processed"] == len(missing) and summary["skipped"] == 24 - len(missing), summary
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    (out / "n" / ".05.tif.labels.png.abc123.tmp").unlink()
    got = read_tree(out)
    assert sorted(got) == sorted(expected) and [k for k in got if got[k] != expected[k]] == []
