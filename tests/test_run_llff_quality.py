"""scripts/run_llff_quality.sh, the detached job that GPU device calls poll: on the CPU, with a tiny run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_detached_job_runs_its_own_snapshot_of_the_code(tiny_fern: Path, tmp_path: Path):
    repo = tmp_path / "repo"  # stands for the working tree that every device call copies anew
    for name in ("scripts", "threedsr_ns"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo)
    work, go = tmp_path / "work", tmp_path / "go"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", ISOLATED="1", WAIT_FOR=str(go),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               COMPARE_ARGS="--backend tiny-random --denoise-steps 2 --crop 48")
    started = subprocess.run(["bash", "scripts/run_llff_quality.sh", "start", "../work", "8", "4", "bicubic",
                              str(tiny_fern)], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "started 1 scene(s)" in started.stdout
    shutil.rmtree(repo)  # the tree is gone (being re-copied) when the job starts its processes
    go.touch()
    deadline = time.monotonic() + 900
    while not (work / "all.done").exists():
        log = work / "fern.log"
        assert time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else "no log"
        time.sleep(2)
    log = (work / "fern.log").read_text()
    assert "scene fern done in" in log and (work / "fern" / "compare.json").is_file(), log[-3000:]
    summary = json.loads((work / "fern" / "compare.json").read_text())
    assert list(summary["methods"]) == ["bicubic"] and summary["schedule"] == {"N0": 8, "K": 2, "M": 4}, log[-3000:]

    # what a device call brings back: one tarball per scene, with the log's excerpt to commit beside the results
    out = tmp_path / "out"
    out.mkdir()
    collected = subprocess.run(["bash", str(ROOT / "scripts" / "run_llff_quality.sh"), "collect", str(work), str(out)],
                               capture_output=True, text=True, timeout=120)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    with tarfile.open(out / "fern.tar.gz") as tar:
        names = tar.getnames()
        excerpt = tar.extractfile("fern/log-excerpt.txt").read().decode()
    assert "fern/compare.json" in names and not any(n.startswith(("fern/runs", "fern/shared_geometry")) for n in names)
    assert "| bicubic |" in excerpt and "scene fern done in" in excerpt and "Step (% Done)" not in excerpt

    # the warm-up, back over two device calls in pieces (small ones here, so that there are several) and joined on
    # the next machine into a folder for --warmup-run, byte for byte
    script = str(ROOT / "scripts" / "run_llff_quality.sh")
    warmup = work / "fern" / "runs" / "fern" / "3dsr" / "warm-up"
    ckpt = sorted((warmup / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    packed = sum((warmup / name).stat().st_size for name in ("config.yml", "warmup.json")) + ckpt.stat().st_size
    assert packed > 100_000  # so that tar's few kB of headers and padding keep it to four pieces of a third
    piece_env = dict(os.environ, WARMUP_PIECE_BYTES=str(packed // 3 + 1))
    calls = [tmp_path / "call1", tmp_path / "call2"]
    said = []
    for call, first in zip(calls, (0, 2)):
        call.mkdir()
        done = subprocess.run(["bash", script, "collect-warmup", str(work), str(call), str(first), "2"], env=piece_env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        said.append(done.stdout.strip().splitlines()[-1])
    assert said == ["warm-up pieces 0..1 of 4 copied; 2 left", "warm-up pieces 2..3 of 4 copied; 0 left"], said
    assert len(list(calls[0].glob("fern.tar.piece.*"))) == 2 and (calls[0] / "fern.md5").is_file()
    carried = tmp_path / "carried"  # what the next session carries in: every piece and the md5
    carried.mkdir()
    for call in calls:
        for f in call.iterdir():
            shutil.copy(f, carried)
    dest, incomplete = tmp_path / "next-machine", tmp_path / "incomplete"
    shutil.copytree(carried, incomplete)
    sorted(incomplete.glob("fern.tar.piece.*"))[-1].unlink()
    joined = subprocess.run(["bash", script, "join-warmup", str(carried), str(dest)], capture_output=True, text=True,
                            timeout=120)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    for name in ("config.yml", "warmup.json", f"nerfstudio_models/{ckpt.name}"):
        assert (dest / "fern" / "warm-up" / name).read_bytes() == (warmup / name).read_bytes(), name
    broken = subprocess.run(["bash", script, "join-warmup", str(incomplete), str(tmp_path / "elsewhere")],
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and "fern: pieces missing or damaged" in broken.stderr, broken.stderr


def test_the_excerpt_joins_the_records_rich_wrapped(tmp_path: Path):
    """A record rich wrapped onto an indented line without the file:line column comes out whole (the log lines of
    a GPU run, session 10); an unwrapped record without a timestamp is kept too, and progress rows are not."""
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "fern").mkdir(parents=True)
    (work / "scenes.txt").write_text("1\n")  # as `start` writes it
    out.mkdir()
    pad = " " * 11
    (work / "fern.log").write_text("\n".join([
        "[20:27:55] 3dsr step 4 detail energy over step 1's SR (first 6 views): targets 0.57, renders 0.54        "
        "pipeline.py:271",
        pad + "3dsr denoise step 4 done: render 0.12s, encode 0.00s, noise 0.32s, denoise 1.28s, decode      "
        "pipeline.py:248",
        pad + "0.04s, swap 0.00s" + " " * 90,
        pad + "3dsr pre-flight passed in 0.4s: 17 train views at 504x378 (undistorted)       preflight.py:64",
        "8000 (88.89%)       10.362 ms            50 s, 49.407 ms      12.55 M",
        "scene fern done in 310 s",
    ]) + "\n")
    collected = subprocess.run(["bash", str(ROOT / "scripts" / "run_llff_quality.sh"), "collect", str(work), str(out)],
                               capture_output=True, text=True, timeout=60)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert (work / "fern" / "log-excerpt.txt").read_text().splitlines() == [
        "[20:27:55] 3dsr step 4 detail energy over step 1's SR (first 6 views): targets 0.57, renders 0.54  "
        "pipeline.py:271",
        pad + "3dsr denoise step 4 done: render 0.12s, encode 0.00s, noise 0.32s, denoise 1.28s, decode 0.04s, "
        "swap 0.00s  pipeline.py:248",
        pad + "3dsr pre-flight passed in 0.4s: 17 train views at 504x378 (undistorted)  preflight.py:64",
        "scene fern done in 310 s",
    ]


def test_status_wait_and_collect_say_at_once_when_the_job_is_not_on_this_machine(tmp_path: Path):
    """A device call after a pause finds a fresh machine (session 14 lost 560 s of device time waiting there for a
    job that was gone): status, wait, collect, stop and collect-warmup exit 3 naming the folder, where wait would
    otherwise sleep out its 600 s (the subprocess timeout fails the test first), while a mistyped subcommand still
    gets the usage line; on a job that has ended, wait returns 0."""
    script = str(ROOT / "scripts" / "run_llff_quality.sh")
    gone = str(tmp_path / "gone")
    for args in (["status", gone], ["wait", gone, "600"], ["collect", gone, str(tmp_path)], ["stop", gone],
                 ["collect-warmup", gone, str(tmp_path), "0", "4"]):
        lost = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=60)
        assert lost.returncode == 3 and f"{gone}: no job on this machine" in lost.stderr, (args, lost.stderr)
    typo = subprocess.run(["bash", script, "stauts", gone], capture_output=True, text=True, timeout=60)
    assert typo.returncode == 2 and "usage:" in typo.stderr, typo.stderr  # a mistyped subcommand gets the usage
    work = tmp_path / "work"
    work.mkdir()
    (work / "scenes.txt").write_text("1\n")
    pending = subprocess.run(["bash", script, "wait", str(work), "0"], capture_output=True, text=True, timeout=30)
    assert pending.returncode == 0 and "not done after 0 s" in pending.stdout
    (work / "all.done").touch()
    done = subprocess.run(["bash", script, "wait", str(work), "60"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "all.done after" in done.stdout


def test_stop_ends_every_process_of_the_job(tmp_path: Path):
    """stop ends the job's whole process session, children included (2026-12-04: `pkill -f compare.py` left a
    spawned training worker running, which shared the GPU with the next job). The job here waits for a file that
    never comes, in a loop whose `sleep` is a child of the job's shell."""
    script = str(ROOT / "scripts" / "run_llff_quality.sh")
    work, scene = tmp_path / "work", tmp_path / "fern"
    scene.mkdir()
    env = dict(os.environ, ISOLATED="1", WAIT_FOR=str(tmp_path / "never"))
    started = subprocess.run(["bash", script, "start", str(work), "8", "4", "bicubic", str(scene)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    sid = (work / "job.pid").read_text().strip()

    def session() -> list:
        found = subprocess.run(["pgrep", "-s", sid], capture_output=True, text=True)
        return found.stdout.split()

    deadline = time.monotonic() + 30
    while len(session()) < 2:  # the job's shell and its sleep
        assert time.monotonic() < deadline, session()
        time.sleep(0.2)
    stopped = subprocess.run(["bash", script, "stop", str(work)], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and f"session {sid}" in stopped.stdout, stopped.stdout + stopped.stderr
    assert session() == [] and not (work / "all.done").exists()


def test_collect_leaves_the_pictures_out_of_a_tarball_too_big_to_come_back(tmp_path: Path):
    """A tarball over COLLECT_MAX_BYTES is made again without its pictures and the full log, keeping the results and
    the excerpt (2026-12-04: a 20 MB fern tarball with 2016x1512 contact sheets did not come back)."""
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "fern").mkdir(parents=True)
    out.mkdir()
    (work / "scenes.txt").write_text("1\n")
    (work / "fern" / "compare.json").write_text('{"methods": {}}')
    (work / "fern" / "contact_sheet_4.png").write_bytes(os.urandom(200_000))  # incompressible
    (work / "fern.log").write_text("scene fern done in 310 s\n")
    script = str(ROOT / "scripts" / "run_llff_quality.sh")
    for limit, small in (("10000000", False), ("100000", True)):
        collected = subprocess.run(["bash", script, "collect", str(work), str(out)], capture_output=True, text=True,
                                   timeout=60, env=dict(os.environ, COLLECT_MAX_BYTES=limit))
        assert collected.returncode == 0, collected.stdout + collected.stderr
        with tarfile.open(out / "fern.tar.gz") as tar:
            names = set(tar.getnames())
        assert {"fern/compare.json", "fern/log-excerpt.txt"} <= names
        assert ("fern/contact_sheet_4.png" in names, "fern/fern.log" in names) == (not small, not small), names
        assert ("collected without them" in collected.stdout) == small
        assert (out / "fern.tar.gz").stat().st_size < (100_000 if small else 10_000_000)
