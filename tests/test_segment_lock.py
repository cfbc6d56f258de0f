"""One segment job per output: a second job on an output that a running job holds is refused (one line,
exit code 2, naming the holder) and writes nothing; a killed job's lock is taken over and ``--resume``
finishes its work; on ``pyarrow`` filesystems (heartbeat locks) a stale heartbeat is taken over, a fresh
one is not, and a holder whose lock was taken over stops."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_tree
from partclipseg import storage
from partclipseg.cli import main
from partclipseg.errors import OutputError

PARTS = "dog's head, dog's leg, cat's head"
IMAGES = 6

# A real segment job (``partclipseg segment`` through the CLI, or a torchrun script) with two hooks:
# HOLD=<path> stops it once it holds the output (before its first batch; under Ray before Ray starts),
# writes <path>.holding and waits until <path> exists; KILL_AFTER=k sends it SIGKILL after its k-th batch.
JOB = """
import os, signal, sys, time
import partclipseg.segment_job as sj
import partclipseg.engines.ray_engine as re
from partclipseg.cli import main
hold = os.environ.get("HOLD")
def wait():
    open(hold + ".holding", "w").close()
    while not os.path.exists(hold):
        time.sleep(0.05)
real, real_connect = sj.ItemProcessor.process, re._connect
batches = [0]
def process(self, items, **kw):
    batches[0] += 1
    if batches[0] == 1 and hold and "--engine" not in sys.argv:
        wait()
    result = real(self, items, **kw)
    if batches[0] == int(os.environ.get("KILL_AFTER", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return result
def connect(*args):
    wait()
    return real_connect(*args)
sj.ItemProcessor.process, re._connect = process, connect
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    for i in range(IMAGES):
        path = tmp_path / "in" / f"d{i % 2}" / f"im{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return tmp_path / "in"


def _args(model_dir, images, out, *extra) -> list[str]:
    return ["segment", str(images), "--model", str(model_dir), "--parts", PARTS, "--out", str(out),
            "--batch-size", "2", "--no-overlay", *extra]


def _job(tmp_path, args, torchrun=False, **env) -> subprocess.Popen:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    return subprocess.Popen([*launcher, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _wait_for(path: Path, job: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _out_dir(out: str) -> Path:
    return Path(out[len("file://"):]) if out.startswith("file://") else Path(out)


def _release_and_finish(first: subprocess.Popen, hold: Path) -> None:
    """Let the held first job go on; it must finish every image (it is killed if it hangs)."""
    hold.touch()
    try:
        stdout, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["processed"] == IMAGES


@pytest.fixture(params=["folder", pytest.param("uri", marks=pytest.mark.slow)])  # uri: the heartbeat lock in a job
def out(request, tmp_path) -> str:
    if request.param == "uri":
        pytest.importorskip("pyarrow")
        return (tmp_path / "out").as_uri()
    return str(tmp_path / "out")


@pytest.mark.parametrize("engine", ["local", pytest.param("torchrun", marks=pytest.mark.slow),
                                    pytest.param("ray", marks=pytest.mark.slow)])
def test_a_second_job_on_an_output_in_use_is_refused_and_writes_nothing(capsys, model_dir, images, out, engine,
                                                                        tmp_path):
    """``engine`` runs the first job (its ranks / workers share its lock), a local job comes second."""
    if engine == "ray":
        pytest.importorskip("ray.data")
    if engine != "local" and out.startswith("file://"):
        pytest.skip("the heartbeat lock is exercised with the local engine")
    hold = tmp_path / "go"
    extra = ("--engine", "ray", "--workers", "2") if engine == "ray" else ()
    first = _job(tmp_path, _args(model_dir, images, out, *extra), torchrun=engine == "torchrun", HOLD=str(hold))
    try:
        _wait_for(hold.with_suffix(".holding"), first)
        before = read_tree(_out_dir(out))
        record = json.loads(before[storage.LOCK_FILE])
        holder = record["pid"]
        if engine == "torchrun":  # rank 0, a child of the launcher
            assert int(Path(f"/proc/{holder}/stat").read_text().rsplit(")", 1)[1].split()[1]) == first.pid
        else:
            assert holder == first.pid
        assert record["host"] == socket.gethostname()
        capsys.readouterr()
        code = main(_args(model_dir, images, out, "--resume"))
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"is in use by another segment job (pid {holder} on {socket.gethostname()}" in err
        assert read_tree(_out_dir(out)) == before  # nothing written, not even the job file
    except BaseException:
        first.kill()
        raise
    _release_and_finish(first, hold)
    assert not (_out_dir(out) / storage.LOCK_FILE).exists()  # released at the end
    code = main(_args(model_dir, images, out, "--resume"))  # free again
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == IMAGES


@pytest.mark.slow
def test_a_torchrun_job_on_an_output_in_use_is_refused_once_and_writes_nothing(model_dir, images, tmp_path):
    """The second job runs under torchrun: its rank 0 prints the one refusal line and exits 2, the
    other rank says nothing and does not hang; torchrun's launcher reports the rank's exit code 2 in
    its own failure summary and exits 1 (the launcher's behaviour, documented in the README)."""
    out = str(tmp_path / "out")
    hold = tmp_path / "go"
    first = _job(tmp_path, _args(model_dir, images, out), HOLD=str(hold))
    try:
        _wait_for(hold.with_suffix(".holding"), first)
        before = read_tree(_out_dir(out))
        second = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "partclipseg", *_args(model_dir, images, out, "--resume")],
                                capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
        refusals = [line for line in second.stderr.splitlines() if "is in use by another segment job" in line]
        assert len(refusals) == 1 and refusals[0].startswith("error: "), second.stderr[-3000:]
        assert f"(pid {first.pid} on {socket.gethostname()}" in refusals[0]
        assert "exitcode  : 2" in second.stderr  # the rank's code, in torchrun's summary
        assert second.returncode == 1  # torchrun's own exit code when a rank fails
        assert read_tree(_out_dir(out)) == before
    except BaseException:
        first.kill()
        raise
    _release_and_finish(first, hold)


def test_a_killed_jobs_lock_is_taken_over_and_resume_finishes_its_work(capsys, model_dir, images, out, tmp_path):
    killed = _job(tmp_path, _args(model_dir, images, out), KILL_AFTER="2")
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -9, stderr
    left = _out_dir(out)
    assert json.loads((left / storage.LOCK_FILE).read_text())["pid"] == killed.pid  # the dead job's lock
    assert len([p for p in left.rglob("im*.png.json")]) == 4  # two batches of two were written
    capsys.readouterr()
    code = main(_args(model_dir, images, out, "--resume"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"pid {killed.pid} on {socket.gethostname()}" in captured.err and "taking it over" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["processed"] == IMAGES - 4 and summary["skipped"] == 4
    assert main(_args(model_dir, images, tmp_path / "clean")) == 0  # one uninterrupted job
    assert read_tree(left) == read_tree(tmp_path / "clean")


# ---------------------------------------------------------------------------- heartbeat locks (pyarrow)
@pytest.fixture
def arrow_store(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(storage, "LOCK_SETTLE_S", 0.01)
    store = storage.open_store((tmp_path / "o").as_uri())
    store.prepare()
    return store


def _foreign_lock(store, heartbeat_age: float) -> dict:
    record = {"owner": "elsewhere-job", "pid": 4242, "host": "another-node", "started": time.time() - 1000,
              "heartbeat": time.time() - heartbeat_age}
    store.write_bytes(storage.LOCK_FILE, json.dumps(record).encode())
    return record


def test_a_fresh_heartbeat_from_another_host_is_respected(arrow_store):
    _foreign_lock(arrow_store, heartbeat_age=storage.LOCK_STALE_S / 2)
    with pytest.raises(OutputError, match="in use by another segment job \\(pid 4242 on another-node"):
        arrow_store.lock()
    assert json.loads(arrow_store.read_bytes(storage.LOCK_FILE))["owner"] == "elsewhere-job"


def test_a_stale_heartbeat_is_taken_over_and_released(arrow_store):
    _foreign_lock(arrow_store, heartbeat_age=storage.LOCK_STALE_S + 5)
    notes = []
    with arrow_store.lock(notes.append):
        held = json.loads(arrow_store.read_bytes(storage.LOCK_FILE))
        assert held["pid"] == os.getpid() and held["owner"] != "elsewhere-job"
        assert len(notes) == 1 and "pid 4242 on another-node" in notes[0] and "taking it over" in notes[0]
    assert not arrow_store.exists(storage.LOCK_FILE)


def test_a_holder_whose_lock_was_taken_over_stops(arrow_store, monkeypatch):
    monkeypatch.setattr(storage, "LOCK_HEARTBEAT_S", 0.02)
    lock = arrow_store.lock()
    try:
        beat = json.loads(arrow_store.read_bytes(storage.LOCK_FILE))["heartbeat"]
        deadline = time.time() + 10
        while json.loads(arrow_store.read_bytes(storage.LOCK_FILE))["heartbeat"] == beat and time.time() < deadline:
            time.sleep(0.01)
        assert json.loads(arrow_store.read_bytes(storage.LOCK_FILE))["heartbeat"] > beat  # it beats
        lock.check()
        _foreign_lock(arrow_store, heartbeat_age=0)  # another job decided ours was stale
        while lock.lost is None and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(OutputError, match="pid 4242 on another-node.*took over the job lock"):
            lock.check()
    finally:
        lock.release()
    assert json.loads(arrow_store.read_bytes(storage.LOCK_FILE))["owner"] == "elsewhere-job"  # not ours to delete
