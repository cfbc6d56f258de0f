"""The segment job (plan -> process -> report) on the local engine and under torchrun: unique output
names that never land on an input, refused non-regular files, resume keyed on the job, unusable
output locations, and a 2-process torchrun run equal to one process byte for byte."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_toy_image_tree, read_tree
from partclipseg.cli import main

PARTS = "dog's head, dog's leg, cat's head"
REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, seed: int, size=(30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *args) -> tuple[int, dict, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if out.strip() else {}, err


def _segment(capsys, model_dir, out, *inputs, extra=()):
    return _run(capsys, "segment", *inputs, "--model", model_dir, "--parts", PARTS, "--out", out, *extra)


def _sources(out: Path) -> dict[str, str]:
    """output JSON (relative) -> the source it names"""
    return {p.relative_to(out).as_posix(): json.loads(p.read_text())["source"]
            for p in out.rglob("*.json") if not p.name.startswith("partclipseg-")}


# ---------------------------------------------------------------------------- defect 3: unique names
def test_same_stem_with_two_suffixes_gets_two_output_sets(capsys, model_dir, tmp_path):
    folder = tmp_path / "in"
    _image(folder / "pic.jpg", 0)
    _image(folder / "pic.png", 1, (50, 20))
    code, summary, err = _segment(capsys, model_dir, tmp_path / "out", folder)
    assert code == 0, err
    assert summary["processed"] == 2
    assert _sources(tmp_path / "out") == {"pic.jpg.json": str(folder / "pic.jpg"), "pic.png.json": str(folder / "pic.png")}
    labels = Image.open(tmp_path / "out" / "pic.png.labels.png")
    assert labels.size == (20, 50)


@pytest.mark.parametrize("as_folders", [False, True])
def test_same_relative_path_in_two_folders_does_not_collide(capsys, model_dir, tmp_path, as_folders):
    a = _image(tmp_path / "a" / "x" / "img.jpg", 0)
    b = _image(tmp_path / "b" / "x" / "img.jpg", 1)
    inputs = [tmp_path / "a", tmp_path / "b"] if as_folders else [a, b]
    code, summary, err = _segment(capsys, model_dir, tmp_path / "out", *inputs)
    assert code == 0 and summary["processed"] == 2, err
    sources = _sources(tmp_path / "out")
    assert sorted(sources.values()) == sorted(str(p) for p in (a, b))
    assert len(sources) == 2


def test_out_equal_to_the_input_folder_never_overwrites_an_input(capsys, model_dir, tmp_path):
    folder = tmp_path / "in"
    _image(folder / "dog.jpg", 0)
    labels_like = _image(folder / "dog.labels.png", 1)  # a real image whose name looks like an output
    original = labels_like.read_bytes()
    for run in range(2):  # the second run must not take the first run's outputs as inputs
        code, summary, err = _segment(capsys, model_dir, folder, folder)
        assert code == 0 and summary["processed"] == 2, (run, err)
        assert labels_like.read_bytes() == original
    assert set(_sources(folder).values()) == {str(folder / "dog.jpg"), str(folder / "dog.labels.png")}
    assert "4 file(s) among the inputs are outputs of an earlier run" in err


def test_an_output_that_would_replace_a_named_input_is_refused(capsys, model_dir, tmp_path):
    folder = tmp_path / "in"
    source = _image(folder / "x.jpg", 0)
    victim = _image(folder / "x.jpg.labels.png", 1)
    before = victim.read_bytes()
    code, _, err = _segment(capsys, model_dir, folder, source, victim)
    assert code == 2 and "would be overwritten" in err and "Traceback" not in err
    assert victim.read_bytes() == before and not (folder / "x.jpg.json").exists()


def test_plan_names_mirror_folders_and_resolve_clashes(tmp_path):
    from partclipseg.segment_job import plan_inputs

    in1, in2 = make_toy_image_tree(tmp_path)
    plan = plan_inputs([in1, in2, os.path.join(in1, "a.jpg")], tmp_path / "out")  # a.jpg named twice: one item
    names = [it.name for it in plan.items]
    assert names == sorted(names) and len(set(names)) == len(names) == 25  # 24 images + a corrupt one
    assert {"in1/a.jpg", "in2/a.jpg", "a.png", "in1/x/img.jpg", "in2/x/img.jpg", "y/x/img.jpg",
            "deep/1/2/c.png", "m/Case.PNG"} <= set(names)
    assert [p for p, _ in plan.problems] == []  # the corrupt file is found; it fails when read


def test_uri_inputs_and_output_give_the_same_files(capsys, model_dir, tmp_path):
    pytest.importorskip("pyarrow")
    folder = tmp_path / "in"
    _image(folder / "x" / "a.png", 0)
    _image(folder / "b.jpg", 1)
    assert _segment(capsys, model_dir, tmp_path / "plain", folder)[0] == 0
    code, summary, err = _segment(capsys, model_dir, (tmp_path / "uri").as_uri(), folder.as_uri())
    assert code == 0 and summary["processed"] == 2, err
    plain, uri = read_tree(tmp_path / "plain"), read_tree(tmp_path / "uri")
    assert sorted(plain) == sorted(uri)
    for name in plain:
        if name.endswith(".png"):
            assert plain[name] == uri[name]
        elif name.endswith(".json") and not name.startswith("partclipseg-"):
            a, b = json.loads(plain[name]), json.loads(uri[name])
            assert b["source"] == f"{folder.as_uri()}/{name[:-5]}"
            assert {**a, "source": None} == {**b, "source": None}


# ---------------------------------------------------------------------------- defect 6: non-regular files
def test_fifos_named_like_images_are_refused_not_waited_on(model_dir, tmp_path):
    folder = tmp_path / "in"
    _image(folder / "good.png", 0)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(tmp_path / "direct.jpg")
    cmd = [sys.executable, "-m", "partclipseg", "segment", str(tmp_path / "direct.jpg"), str(folder), "--model",
           str(model_dir), "--parts", PARTS, "--out", str(tmp_path / "out")]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("segment blocked on a FIFO")
    assert done.returncode == 1, done.stderr
    assert "direct.jpg: a FIFO, not a regular file; refused" in done.stderr
    assert "pipe.jpg: a FIFO, not a regular file; refused" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["processed"] == 1
    failures = [json.loads(line) for line in (tmp_path / "out" / "partclipseg-failures.jsonl").read_text().splitlines()]
    assert sorted(Path(f["source"]).name for f in failures) == ["direct.jpg", "pipe.jpg"]


def test_reading_a_file_that_became_a_fifo_does_not_block(tmp_path):
    from partclipseg.errors import ImageError
    from partclipseg.storage import read_input_bytes

    os.mkfifo(tmp_path / "late.png")  # e.g. replaced between planning and reading
    with pytest.raises(ImageError, match="FIFO"):
        read_input_bytes(str(tmp_path / "late.png"))


# ---------------------------------------------------------------------------- resume keyed on the job
def test_resume_refuses_another_vocabulary_or_model_and_a_plain_run_redoes(capsys, model_dir, tmp_path):
    import torch

    from partclipseg.config import get_config
    from partclipseg.model import build_model

    folder = tmp_path / "in"
    _image(folder / "a.png", 0)
    _image(folder / "b.png", 1)
    out = tmp_path / "out"
    assert _segment(capsys, model_dir, out, folder)[0] == 0
    code, _, err = _run(capsys, "segment", folder, "--model", model_dir, "--parts", "cat's tail, cat's head", "--out",
                        out, "--resume")
    assert code == 2 and "another vocabulary" in err and "Traceback" not in err
    torch.manual_seed(1)
    other = tmp_path / "other-model"
    build_model(get_config("tiny-fast")).save_pretrained(other)
    code, _, err = _segment(capsys, other, out, folder, extra=["--resume"])
    assert code == 2 and "another model weights" in err
    code, summary, err = _run(capsys, "segment", folder, "--model", model_dir, "--parts", "cat's tail, cat's head",
                              "--out", out)
    assert code == 0 and summary["processed"] == 2 and "redoing every image" in err
    assert json.loads((out / "a.png.json").read_text())["vocabulary"] == ["cat's tail", "cat's head"]


def test_resume_trusts_only_outputs_of_the_same_job(capsys, model_dir, tmp_path):
    """Job A on two images, then job B (other vocabulary) redoes one image only: B --resume must redo the other."""
    folder = tmp_path / "in"
    a = _image(folder / "a.png", 0)
    _image(folder / "b.png", 1)
    out = tmp_path / "out"
    assert _segment(capsys, model_dir, out, folder)[0] == 0
    b_parts = ["--model", model_dir, "--parts", "cat's tail, cat's head", "--out", out]
    assert _run(capsys, "segment", a, *b_parts)[0] == 0
    code, summary, err = _run(capsys, "segment", folder, *b_parts, "--resume")
    assert code == 0 and summary == {**summary, "processed": 1, "skipped": 1}, err
    for name in ("a.png.json", "b.png.json"):
        assert json.loads((out / name).read_text())["vocabulary"] == ["cat's tail", "cat's head"]


# ---------------------------------------------------------------------------- unusable --out
def test_out_that_is_a_file_is_one_line_and_exit_2(capsys, model_dir, tmp_path):
    _image(tmp_path / "a.png", 0)
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        code, _, err = _segment(capsys, model_dir, out, tmp_path / "a.png")
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert str(tmp_path / "taken") in err


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_unwritable_out_is_one_line_and_exit_2(capsys, model_dir, tmp_path):
    _image(tmp_path / "a.png", 0)
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
    else:  # root ignores permission bits: a read-only filesystem
        context = _tmpfs(tmp_path / "ro", "ro,size=64k")
    with context as ro:
        code, _, err = _segment(capsys, model_dir, ro / "out", tmp_path / "a.png")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot write to --out" in err


def test_full_out_is_one_line_and_exit_2_and_leaves_no_partial_output(capsys, model_dir, tmp_path):
    _image(tmp_path / "a.png", 0, (300, 300))  # its overlay does not fit in 16 KB
    with _tmpfs(tmp_path / "full", "size=16k") as full:
        code, _, err = _segment(capsys, model_dir, full, tmp_path / "a.png")
        left = sorted(p.name for p in full.iterdir())
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot write to --out" in err and "full" in err
    assert "a.png.json" not in left and not [n for n in left if n.endswith(".tmp")]


def test_file_size_limit_is_one_line_and_exit_2(model_dir, tmp_path):
    """Without root: RLIMIT_FSIZE makes writes fail like a full disk (EFBIG)."""
    resource = pytest.importorskip("resource")
    _image(tmp_path / "a.png", 0, (300, 300))

    def limit():
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    cmd = [sys.executable, "-m", "partclipseg", "segment", str(tmp_path / "a.png"), "--model", str(model_dir),
           "--parts", PARTS, "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write to --out" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "a.png.json").exists()


def test_missing_ray_is_a_clear_message(monkeypatch, capsys, tmp_path, model_dir):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    (tmp_path / "in").mkdir()
    code = main(["segment", str(tmp_path / "in"), "--model", str(model_dir), "--parts", PARTS, "--out",
                 str(tmp_path / "o"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install" in err and "partclipseg[ray]" in err and "Traceback" not in err


def test_ray_knobs_without_the_ray_engine_are_refused(capsys, model_dir, tmp_path):
    _image(tmp_path / "a.png", 0)
    code, _, err = _segment(capsys, model_dir, tmp_path / "o", tmp_path / "a.png", extra=["--workers", "2"])
    assert code == 2 and "--workers: only with --engine ray" in err


# ---------------------------------------------------------------------------- torchrun
@pytest.mark.slow  # two process groups of 1 and 2 processes: > 10 s on 2 shared cores
def test_torchrun_two_processes_equal_one_process(capsys, model_dir, tmp_path):
    inputs = make_toy_image_tree(tmp_path / "images")
    args = [*inputs, "--model", str(model_dir), "--parts", PARTS, "--batch-size", "3"]
    code, summary, _ = _run(capsys, "segment", *args, "--out", tmp_path / "one")
    assert code == 1 and summary["processed"] == 24 and summary["failed"] == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "partclipseg",
           "segment", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["processed"] == 24 and summary["failed"] == 1 and summary["engine"] == "torchrun (2 processes)"
    one, two = read_tree(tmp_path / "one"), read_tree(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 24 * 3 + 2
    assert [k for k in one if one[k] != two[k]] == []


class _SlowStore:
    """A local store whose writes of the first image's files are slow and whose writes of ``fail_on`` raise
    (records the order of finished writes)."""

    def __init__(self, store, slow: str, fail_on: str | None = None, error=None):
        self.store, self.slow, self.fail_on, self.error = store, slow, fail_on, error
        self.root = store.root
        self.finished: list[str] = []

    def write_bytes(self, name: str, data: bytes) -> None:
        import time

        if name.startswith(self.slow):
            time.sleep(0.3)
        if self.fail_on is not None and name.startswith(self.fail_on):
            raise self.error
        self.store.write_bytes(name, data)
        self.finished.append(name)

    def __getattr__(self, name):
        return getattr(self.store, name)


def _processor(model_dir, tmp_path, n: int):
    from partclipseg.segment_job import ItemProcessor, SegmentOptions, plan_inputs
    from partclipseg.storage import open_store

    for k in range(n):
        _image(tmp_path / "in" / f"{k}.png", k)
    options = SegmentOptions(classes=("dog's head", "dog's leg", "cat's head"), model=str(model_dir), device="cpu",
                             batch_size=n)
    processor = ItemProcessor(options, open_store(str(tmp_path / "out")))
    return processor, plan_inputs([str(tmp_path / "in")], tmp_path / "out").items


def test_a_batch_returns_only_when_every_output_set_is_written_json_last(model_dir, tmp_path, monkeypatch):
    """Output sets are rendered and written by threads while the model segments the next image; a batch's
    call returns after all of them, each image's JSON written after its other files; the bytes equal the
    one-image-at-a-time outputs."""
    from partclipseg import segment_job

    monkeypatch.setattr(segment_job, "WRITER_THREADS", 4)  # (a 1-core machine gets one writer)
    processor, items = _processor(model_dir, tmp_path, 4)
    processor.store = store = _SlowStore(processor.store, slow=items[0].name)
    statuses = processor.process(items, skip_complete=False)
    assert [s["status"] for s in statuses] == ["ok"] * 4 and [s["name"] for s in statuses] == [i.name for i in items]
    assert len(store.finished) == 4 * 3  # labels, overlay, JSON of every image, all written before the return
    for item in items:
        mine = [n for n in store.finished if n.startswith(item.name + ".")]
        assert mine[-1] == item.name + ".json" and len(mine) == 3
    assert store.finished[-1] == items[0].name + ".json"  # the slow image finished last: the others did not wait
    from partclipseg.storage import open_store

    one = tmp_path / "one"
    processor.store = open_store(str(one))
    for item in items:  # the same bytes as batches of one image
        processor.process([item], skip_complete=False)
        for suffix in (".labels.png", ".overlay.png", ".json"):
            assert (one / (item.name + suffix)).read_bytes() == (tmp_path / "out" / (item.name + suffix)).read_bytes()


def test_a_failed_write_waits_for_the_other_writers_and_propagates(model_dir, tmp_path):
    from partclipseg.errors import PartCLIPSegError
    from partclipseg.storage import OutputError

    processor, items = _processor(model_dir, tmp_path, 3)
    base = processor.store
    processor.store = store = _SlowStore(base, slow=items[0].name, fail_on=items[1].name,
                                         error=OutputError("disk full"))
    with pytest.raises(OutputError, match="disk full"):
        processor.process(items, skip_complete=False)
    assert items[0].name + ".json" in store.finished  # the slow writer finished before the error came out
    assert not any(n.startswith(items[1].name) for n in store.finished)
    # a rendering error of one image fails that image only
    processor.store = _SlowStore(base, slow="-", fail_on=items[2].name, error=PartCLIPSegError("bad pixels"))
    statuses = processor.process(items, skip_complete=False)
    assert [s["status"] for s in statuses] == ["ok", "ok", "failed"] and "bad pixels" in statuses[2]["error"]


def test_results_waiting_for_writers_are_bounded_in_bytes(model_dir, tmp_path, monkeypatch):
    """Room for one result only: each result waits for the previous write (large photos are written one at
    a time), so the slow first image is written first."""
    from partclipseg import segment_job

    monkeypatch.setattr(segment_job, "WRITER_THREADS", 4)
    monkeypatch.setattr(segment_job, "WRITER_BYTES", 1)
    processor, items = _processor(model_dir, tmp_path, 3)
    processor.store = store = _SlowStore(processor.store, slow=items[0].name)
    real_predict, files_at_predict = processor.predictor.predict, []

    def predict(*args, **kwargs):
        files_at_predict.append(len(store.finished))
        return real_predict(*args, **kwargs)

    processor.predictor.predict = predict
    assert [s["status"] for s in processor.process(items, skip_complete=False)] == ["ok"] * 3
    assert [n for n in store.finished if n.endswith(".json")] == [item.name + ".json" for item in items]
    assert files_at_predict == [0, 3, 6]  # each result is made once the previous one is written: one at a time


def test_ctrl_c_in_a_batch_writes_nothing_after_the_call_raised(model_dir, tmp_path, monkeypatch):
    """A Ctrl-C while the first image's files are being written: the call waits for the file in progress,
    skips the rest of that output set (its JSON, the completion mark, above all) and raises; nothing is
    written afterwards."""
    import time

    from partclipseg import segment_job

    monkeypatch.setattr(segment_job, "WRITER_THREADS", 4)
    processor, items = _processor(model_dir, tmp_path, 3)
    processor.store = store = _SlowStore(processor.store, slow=items[0].name)
    real_predict, calls = processor.predictor.predict, []

    def predict(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(0.1)  # the first image's first file is being written
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    processor.predictor.predict = predict
    with pytest.raises(KeyboardInterrupt):
        processor.process(items, skip_complete=False)
    written = list(store.finished)
    time.sleep(1.0)
    assert store.finished == written  # nothing after the raise
    assert items[0].name + ".json" not in written and not (tmp_path / "out" / (items[0].name + ".json")).exists()
    assert not any(n.startswith((items[1].name, items[2].name)) for n in written)


def test_reading_the_umask_from_many_threads_never_changes_it(tmp_path):
    """Reading the umask means setting it; writer threads do it at once: every reading and every written
    file's mode must keep the process's 077."""
    import threading

    from partclipseg.io import _umask, atomic_write_bytes

    old = os.umask(0o077)
    try:
        readings, modes = [], []
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible

        def work(k: int) -> None:
            for j in range(20000):
                readings.append(_umask())
                if j % 2000 == 0:
                    path = tmp_path / f"{k}_{j}.bin"
                    atomic_write_bytes(path, b"x")
                    modes.append(path.stat().st_mode & 0o777)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(switch)
        assert set(readings) == {0o077} and set(modes) == {0o600}
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- prompts checked before the output
@pytest.mark.parametrize("extra, says", [
    (("--point", "10,10", "--box", "0,0,20,20"), "at most one of object_mask, box and point"),
    (("--point", "10,10", "--object", "dog"), "object_name goes with object_mask"),
    (("--protocol", "pred-all", "--object", "dog"), "the pred-all protocol takes no prompt"),
    (("--attention", "giraffe's neck"), "--attention: class \"giraffe's neck\" is not in this vocabulary"),
    (("--object", ""), "--object '' has no part classes"),
    (("--box", "20,5,10,15"), "is not a non-empty box"),
    (("--box", "5,5,5,15"), "is not a non-empty box"),
    (("--point", "nan,3"), "point must be 2 finite numbers"),
    (("--point", "inf,1"), "point must be 2 finite numbers"),
    # a value after a space that begins with '-' reaches the check (argparse alone: "expected one argument")
    (("--point", "-3,4"), "point -3,4 is outside the image (a negative coordinate)"),
    (("--box", "-10,0,20,20"), "box -10,0,20,20 is not a non-empty box"),
    (("--box", "-.5,0,20,20"), "box -0.5,0,20,20 is not a non-empty box"),
    (("--bo", "-1,0,20,20"), "box -1,0,20,20 is not a non-empty box"),  # argparse's abbreviations
    (("--po", "-1,2"), "point -1,2 is outside the image"),
    (("--object-mask", "EMPTY_MASK"), "the object mask is empty"),
])
def test_a_prompt_mistake_is_one_line_and_exit_2_and_leaves_the_earlier_job_intact(capsys, model_dir, tmp_path,
                                                                                     extra, says):
    """Prompt mistakes that do not depend on the image stop the job before it touches --out: the
    complete outputs of an earlier job in the same folder stay as they were (the job file included)."""
    folder = tmp_path / "in"
    _image(folder / "a.jpg", 0)
    _image(folder / "b.jpg", 1)
    out = tmp_path / "out"
    code, summary, err = _segment(capsys, model_dir, out, folder)
    assert code == 0 and summary["processed"] == 2, err
    before = read_tree(out)
    if "EMPTY_MASK" in extra:
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "empty_mask.png")
        extra = tuple(str(tmp_path / "empty_mask.png") if e == "EMPTY_MASK" else e for e in extra)
    code, summary, err = _segment(capsys, model_dir, out, folder, extra=extra)
    assert code == 2 and summary == {}
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], err
    assert read_tree(out) == before


@pytest.mark.parametrize("inputs", [("missing.jpg",), ("empty_folder",), ("nothing*.jpg",)])
def test_no_image_to_segment_is_one_line_and_exit_2_and_creates_no_output(capsys, model_dir, tmp_path, inputs):
    (tmp_path / "empty_folder").mkdir()
    out = tmp_path / "out"
    code, summary, err = _segment(capsys, model_dir, out, *(tmp_path / i for i in inputs))
    assert code == 2 and summary == {}
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nothing to segment:"), err
    assert not out.exists()


def test_a_missing_input_beside_a_real_one_fails_that_input_only(capsys, model_dir, tmp_path):
    _image(tmp_path / "a.jpg", 0)
    code, summary, err = _segment(capsys, model_dir, tmp_path / "out", tmp_path / "a.jpg", tmp_path / "missing.jpg")
    assert code == 1 and summary["processed"] == 1 and summary["failed"] == 1, err
    assert "missing.jpg: no such file" in err
