"""scripts/compare.py end to end on tiny fern: three methods trained and scored the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare.py"
QUALITY_TABLE = SCRIPT.with_name("quality_table.py")


def test_compare_trains_and_scores_bicubic_per_frame_and_3dsr(tiny_fern: Path, tmp_path: Path):
    out = tmp_path / "fern"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_fern), "--out", str(out), "--backend", "tiny-random",
         "--warmup-iters", "8", "--denoise-steps", "2", "--phase-iters", "4", "--crop", "48", "--jobs", "3"],
        capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1"), timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "compare.json").read_text())
    assert summary["protocol"] == "small" and summary["schedule"] == {"N0": 8, "K": 2, "M": 4}
    scores = summary["methods"]
    assert list(scores) == ["bicubic", "per-frame", "3dsr"]  # in this order although trained side by side (--jobs 3)
    # each method's own SR backend, not only --backend (bicubic's targets come from the bicubic backend)
    assert summary["method_backends"] == {"bicubic": "bicubic", "per-frame": "tiny-random", "3dsr": "tiny-random"}
    assert "(SR backend bicubic: bicubic, per-frame: tiny-random, 3dsr: tiny-random;" in (out / "compare.md").read_text()
    for mean in scores.values():
        assert 5 < mean["psnr"] < 50 and 0 <= mean["ssim"] <= 1 and 0 < mean["lpips_alex"] < 1.5  # real weights, offline
        assert mean["sr_target_disagreement"] >= 0 and mean["wall_s"] > 0 and mean["peak_gpu_mem_gb"] is None
    # every method is graded with the warm-up's geometry, not its own
    assert (out / "shared_geometry.pt").is_file()
    for method, mean in scores.items():  # each run's full report, from the same evaluation (not a second one)
        report = json.loads((out / f"evaluate_{method}" / "metrics.json").read_text())
        assert {k: report["mean"][k] for k in ("psnr", "ssim", "lr_psnr", "detail_consistency")} == \
            {k: mean[k] for k in ("psnr", "ssim", "lr_psnr", "detail_consistency")}
        assert report["consistency"]["geometry"].startswith("the shared depth of")
        assert len(report["test_views"]) >= 1 and f"| {report['test_views'][0]['name']} |" in \
            (out / f"evaluate_{method}" / "metrics.md").read_text()
    # bicubic targets are the smooth upsampled LR; random-weight SR is noise: far less consistent across views
    assert scores["per-frame"]["sr_target_disagreement"] > 2 * scores["bicubic"]["sr_target_disagreement"]
    assert abs(scores["bicubic"]["detail_consistency"]) < 1e-3  # bicubic adds no detail to be consistent about
    table = (out / "compare.md").read_text()
    assert all(f"| {m} |" in table for m in scores)
    assert Image.open(out / "crops.png").size == (4 * 48, 48 + 16)  # GT + three renders
    # one LR warm-up (stopped after N0 = 8 iterations), and every method continued from its checkpoint to N0 + K*M
    runs = out / "runs" / "fern" / "3dsr"
    # the pictures for people: a step whose targets did not change (bicubic after step 1) writes its sheet only
    for method, steps in (("bicubic", ["final", "step1"]), ("3dsr", ["final", "step1", "step2"])):
        assert sorted(p.name for p in (runs / method / "sr_targets").iterdir()) == steps, method
        assert (runs / method / "contact_sheet_step2.png").is_file(), method
    warmup = sorted((runs / "warm-up" / "nerfstudio_models").glob("step-*.ckpt"))
    assert [c.name for c in warmup] == ["step-000000007.ckpt"]
    for method in scores:
        config = yaml.load((runs / method / "config.yml").read_text(), Loader=yaml.Loader)
        assert config.load_checkpoint == warmup[0] and config.stop_at is None
        final = sorted((runs / method / "nerfstudio_models").glob("*.ckpt"))
        assert final[-1].name == "step-000000015.ckpt"
        # the HR iterations after the resume trained the loaded Gaussians (none were densified: same count)
        before, after = (torch.load(c, map_location="cpu", weights_only=False)["pipeline"] for c in (warmup[0], final[-1]))
        for key in ("_model.gauss_params.means", "_model.gauss_params.features_dc"):
            assert before[key].shape == after[key].shape and not torch.equal(before[key], after[key]), key
        # the cost it records: the Gaussians it ended with, and the pace of the iterations it trained
        assert scores[method]["gaussians"] == after["_model.gauss_params.means"].shape[0], method
        assert 0 < scores[method]["ms_per_iteration"] * 1e-3 * (15 - 8) < scores[method]["wall_s"], method

    # the per-scene results merged into the quality table
    stem = tmp_path / "results" / "quality-llff"
    merged = subprocess.run([sys.executable, str(QUALITY_TABLE), "--scenes", str(out), "--out", str(stem),
                             "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    quality = json.loads(stem.with_suffix(".json").read_text())
    assert (quality["protocol"], quality["device"], quality["schedule"]) == ("small", "cpu", summary["schedule"])
    fern = quality["scenes"]["fern"]
    assert fern["render_size"] == [128, 96] and list(fern["methods"]) == list(scores)
    for method, mean in scores.items():
        assert {k: fern["methods"][method][k] for k in ("psnr", "lpips_alex", "detail_consistency", "wall_s")} == \
            {k: mean[k] for k in ("psnr", "lpips_alex", "detail_consistency", "wall_s")}
    d_psnr = scores["3dsr"]["psnr"] - scores["per-frame"]["psnr"]
    text = stem.with_suffix(".md").read_text()
    assert f"- fern: 3dsr - per-frame = {d_psnr:+.3f} dB PSNR" in text
    # the paper's figures are for its own protocol: a small-protocol table does not set them beside its rows
    assert "| 3DSR | 24.21" not in text and "paper +1.460" not in text and "not the small protocol" in text
    assert Image.open(f"{stem}-crops.png").size == Image.open(out / "crops.png").size


def test_quality_table_names_a_scene_without_results(tmp_path: Path):
    result = subprocess.run([sys.executable, str(QUALITY_TABLE), "--scenes", str(tmp_path / "horns"), "--out",
                             str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and f"{tmp_path / 'horns' / 'compare.json'} not found" in result.stderr


def test_a_compare_run_cut_short_keeps_the_methods_already_scored(tiny_fern: Path, tmp_path: Path, monkeypatch):
    # a GPU machine can be taken back mid-run: the table must hold every method finished before that
    module = load_script(SCRIPT, "compare_script", monkeypatch)
    train = module.train

    def train_until_3dsr(method, args, warmup_checkpoint=None):
        if method == "3dsr":
            raise RuntimeError("machine taken back")
        return train(method, args, warmup_checkpoint)

    monkeypatch.setattr(module, "train", train_until_3dsr)
    out = tmp_path / "fern"
    monkeypatch.setattr(sys, "argv", ["compare.py", "--data", str(tiny_fern), "--out", str(out), "--backend", "bicubic",
                                      "--warmup-iters", "8", "--denoise-steps", "1", "--phase-iters", "4"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="machine taken back"):
        module.main()
    scores = json.loads((out / "compare.json").read_text())["methods"]
    assert list(scores) == ["bicubic", "per-frame"] and all(5 < s["psnr"] < 50 for s in scores.values())
    table = (out / "compare.md").read_text()
    assert "| per-frame |" in table and "| 3dsr |" not in table


def test_separate_processes_give_every_method_a_fresh_process(tmp_path: Path, monkeypatch):
    # the cost tables' timings: each method starts in a new process, as separate ns-train runs do, not in one that
    # earlier methods have warmed up (or left garbage in); without the option one worker serves every method
    module = load_script(SCRIPT, "compare_script", monkeypatch)
    for separate, expect_fresh in ((True, True), (False, False)):
        args = module.Args(data=tmp_path, out=tmp_path, jobs=1, separate_processes=separate)
        with module.method_pool(args) as pool:
            pids = [pool.submit(os.getpid).result() for _ in range(3)]
        assert (len(set(pids)) == 3) is expect_fresh and os.getpid() not in pids, (separate, pids)


def test_methods_side_by_side_one_failing_keeps_the_others_scores(tiny_fern: Path, tmp_path: Path):
    # --jobs: a method whose process fails (here: the SD x4 model is not on disk and the hub is off) is named
    # with its error once the others have been scored, and the table holds those others
    out = tmp_path / "fern"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-cache"))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_fern), "--out", str(out), "--backend", "sd-x4-upscaler",
         "--warmup-iters", "8", "--denoise-steps", "1", "--phase-iters", "4", "--methods", "per-frame", "bicubic",
         "--jobs", "2"],
        capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode != 0
    failed = result.stderr[result.stderr.index("methods that failed"):]
    assert "per-frame: BackendLoadError: Could not load the SR model" in failed and "hf download" in failed
    assert "bicubic:" not in failed
    scores = json.loads((out / "compare.json").read_text())["methods"]
    assert list(scores) == ["bicubic"] and 5 < scores["bicubic"]["psnr"] < 50
    assert (out / "evaluate_bicubic" / "metrics.json").exists() and not (out / "evaluate_per-frame").exists()


def test_hr_3dgs_trains_at_gt_size_from_scratch_and_is_scored_at_gt_size(tiny_fern: Path, tmp_path: Path):
    """The ceiling: the same model on the GT photos (transforms_gt.json) for N0 + K*M iterations, no warm-up shared.
    The GT here is JPEG beside PNG LR images, as prepare_llff --protocol paper writes LLFF's images_2: the run's
    images are then named unlike the LR views it is scored against (on the H200 that once failed after training)."""
    data = tmp_path / "data" / "fern"
    shutil.copytree(tiny_fern, data)
    gt_json = data / "transforms_gt.json"
    frames = json.loads(gt_json.read_text())
    for frame in frames["frames"]:
        png = data / frame["file_path"]
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
        frame["file_path"] = str(Path(frame["file_path"]).with_suffix(".jpg"))
    gt_json.write_text(json.dumps(frames))
    out = tmp_path / "fern"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out), "--backend", "bicubic",
         "--warmup-iters", "8", "--denoise-steps", "1", "--phase-iters", "4", "--methods", "hr-3dgs", "--crop", "48",
         "--no-share-warmup"],
        capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1"), timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mean = json.loads((out / "compare.json").read_text())["methods"]["hr-3dgs"]
    report = json.loads((out / "evaluate_hr-3dgs" / "metrics.json").read_text())
    assert report["trained_at_gt"] and report["render_size"] == [128, 96] and report["upscale_factor"] == 4
    assert 5 < mean["psnr"] < 60 and mean["detail_consistency"] is None  # no SR targets to be consistent about
    config = yaml.load((out / "runs" / "fern" / "3dsr" / "hr-3dgs" / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.pipeline.datamanager.data.name == "transforms_gt.json" and config.load_checkpoint is None
    final = sorted((out / "runs" / "fern" / "3dsr" / "hr-3dgs" / "nerfstudio_models").glob("*.ckpt"))[-1]
    assert final.name == "step-000000011.ckpt"  # N0 + K*M = 12 iterations


def test_quality_table_sets_the_paper_figures_beside_paper_protocol_tables_only(monkeypatch):
    module = load_script(QUALITY_TABLE, "quality_table", monkeypatch)
    method = {key: 0.5 for key in module.KEYS}
    for protocol in ("paper", "small"):
        table = {"protocol": protocol, "device": "cpu", "schedule": {"N0": 10, "K": 4, "M": 5},
                 "backend": {"runs/fern": "compact"},
                 "scenes": {"fern": {"render_size": [8, 6], "methods": {"per-frame": dict(method),
                                                                        "3dsr": {**method, "psnr": 0.75}}}}}
        text = module.markdown(table, "")
        assert "- fern: 3dsr - per-frame = +0.250 dB PSNR" in text
        assert ("| 3DSR | 24.21 | 0.754 | 0.181 |" in text) == (protocol == "paper"), protocol
        assert ("paper +1.460" in text) == (protocol == "paper"), protocol


def test_quality_table_names_each_methods_backend_where_compare_recorded_it(tmp_path: Path, monkeypatch):
    """A folder run with --backend compact whose -v2 methods ran compact-v2: the table says so per method; a folder
    from before compare.py recorded it gets no backend key (none is guessed)."""
    module = load_script(QUALITY_TABLE, "quality_table", monkeypatch)
    folders = []
    for name, extra in (("new", {"method_backends": {"per-frame-v2": "compact-v2", "3dsr-v2": "compact-v2"}}),
                        ("old", {})):
        folder = tmp_path / name / "fern"
        folder.mkdir(parents=True)
        methods = {"per-frame-v2": {"psnr": 20.0}, "3dsr-v2": {"psnr": 21.0}} if name == "new" else {"3dsr": {"psnr": 22.0}}
        (folder / "compare.json").write_text(json.dumps({
            "protocol": "paper", "render_size": [8, 6], "backend": "compact", "schedule": {"N0": 1, "K": 4, "M": 1},
            "methods": methods, **extra}))
        folders.append(folder)
    table = module.merge(tuple(folders), "cpu")
    methods = table["scenes"]["fern"]["methods"]
    assert methods["3dsr-v2"]["backend"] == "compact-v2" and "backend" not in methods["3dsr"]
    assert "SR backend of each method, as compare.py recorded it: per-frame-v2 `compact-v2`, 3dsr-v2 `compact-v2`." \
        in module.markdown(table, "")


def test_quality_table_can_link_each_scenes_crops_instead_of_stacking_a_copy(tmp_path: Path):
    scenes = []
    for scene in ("fern", "flower"):
        folder = tmp_path / "runs" / scene
        folder.mkdir(parents=True)
        (folder / "compare.json").write_text(json.dumps({
            "protocol": "small", "render_size": [8, 6], "backend": "compact", "schedule": {"N0": 1, "K": 4, "M": 1},
            "methods": {"bicubic": {"psnr": 20.0}}}))
        Image.new("RGB", (8, 6)).save(folder / "crops.png")
        scenes.append(str(folder))
    stem = tmp_path / "results" / "quality"
    result = subprocess.run([sys.executable, str(QUALITY_TABLE), "--scenes", *scenes, "--out", str(stem),
                             "--no-stack-crops"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    text = stem.with_suffix(".md").read_text()
    assert "![fern (runs)](../runs/fern/crops.png)" in text and "![flower (runs)](../runs/flower/crops.png)" in text
    assert not Path(f"{stem}-crops.png").exists() and "| fern | bicubic | 20.000 |" in text


def test_a_job_split_at_the_warm_up_resumes_every_method_from_the_carried_warm_up(tiny_fern: Path, tmp_path: Path):
    """--stop-after-warmup, the warm-up folder and the data moved elsewhere (as a device session carries them back and
    the next one carries them in, to other paths), then --warmup-run: no second warm-up, and the methods start from the
    carried checkpoint."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    common = ["--backend", "tiny-random", "--warmup-iters", "8", "--denoise-steps", "2", "--phase-iters", "4",
              "--crop", "48", "--methods", "bicubic"]
    first = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "a"), "--data", str(tiny_fern), *common,
                            "--stop-after-warmup"], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert not (tmp_path / "a" / "compare.json").exists() and not (tmp_path / "a" / "runs" / "fern" / "3dsr" / "bicubic").exists()
    carried = tmp_path / "carried"
    shutil.move(str(tmp_path / "a" / "runs" / "fern" / "3dsr" / "warm-up"), carried)
    cost = json.loads((carried / "warmup.json").read_text())
    assert cost["wall_s"] > 0
    data = tmp_path / "elsewhere" / "fern"
    shutil.copytree(tiny_fern, data)
    common += ["--data", str(data)]

    wrong = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "b"), *common, "--warmup-run",
                            str(carried), "--warmup-iters", "9"], capture_output=True, text=True, env=env, timeout=300)
    assert wrong.returncode != 0 and "a warm-up of 8 iterations, not of --warmup-iters 9" in wrong.stderr
    assert not (tmp_path / "b" / "runs").exists()  # refused before any training

    second = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "b"), *common, "--warmup-run",
                             str(carried)], capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = tmp_path / "b" / "runs" / "fern" / "3dsr"
    assert sorted(p.name for p in runs.iterdir()) == ["bicubic"]  # no warm-up trained again
    config = yaml.load((runs / "bicubic" / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.load_checkpoint == carried / "nerfstudio_models" / "step-000000007.ckpt"
    assert Path(config.pipeline.datamanager.data) == data  # trained on the data where it now is
    assert sorted((runs / "bicubic" / "nerfstudio_models").glob("*.ckpt"))[-1].name == "step-000000015.ckpt"
    summary = json.loads((tmp_path / "b" / "compare.json").read_text())
    assert summary["warmup"] == cost and 5 < summary["methods"]["bicubic"]["psnr"] < 50
    geometry = torch.load(tmp_path / "b" / "shared_geometry.pt", map_location="cpu", weights_only=True)
    assert str(carried) in geometry["source"]  # graded with the carried warm-up's depth
