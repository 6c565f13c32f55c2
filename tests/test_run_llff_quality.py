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
