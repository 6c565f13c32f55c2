from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from threedsr_ns.datamanager import ThreeDSRDataManagerConfig


def make_datamanager(data: Path):
    return ThreeDSRDataManagerConfig(data=data).setup(device="cpu", test_mode="val")


def test_serves_lr_during_warmup_then_hr_cameras_with_swapped_targets(tiny_fern: Path):
    dm = make_datamanager(tiny_fern)
    assert dm.lr_size == (24, 32) and dm.num_train_views == 17
    camera, batch = dm.next_train(0)
    assert batch["image"].shape == (24, 32, 3) and "lr_image" not in batch
    assert (int(camera.width), int(camera.height)) == (32, 24)

    lr = dm.lr_images()
    assert lr.shape == (17, 3, 24, 32) and lr.dtype == torch.float32 and 0 <= lr.min() and lr.max() <= 1

    dm.enter_hr(4)
    fx_lr = float(torch.tensor(json.loads((tiny_fern / "transforms.json").read_text())["fl_x"]))
    assert torch.allclose(dm.train_dataset.cameras.fx, torch.tensor(4 * fx_lr))
    assert int(dm.eval_dataset.cameras.width[0]) == 128  # evaluation and ns-render cameras are HR too

    targets = torch.rand(17, 96, 128, 3)
    dm.swap(targets)
    storage = dm.sr_targets.data_ptr()
    for _ in range(17):
        camera, batch = dm.next_train(1)
        i = camera.metadata["cam_idx"]
        assert (int(camera.width), int(camera.height)) == (128, 96)
        assert torch.equal(batch["image"], targets[i])
        assert torch.equal(batch["lr_image"].float() / 255, (lr[i].permute(1, 2, 0) * 255).round() / 255)

    dm.swap(1 - targets)  # in place: the same device storage, new content
    assert dm.sr_targets.data_ptr() == storage and torch.equal(dm.sr_targets, 1 - targets)


def test_swap_rejects_wrong_shapes_and_premature_calls(tiny_fern: Path):
    dm = make_datamanager(tiny_fern)
    with pytest.raises(RuntimeError, match="enter_hr"):
        dm.swap(torch.rand(17, 96, 128, 3))
    dm.enter_hr(4)
    with pytest.raises(ValueError, match=r"\(17, 96, 128, 3\)"):
        dm.swap(torch.rand(17, 24, 32, 3))


def test_images_of_different_sizes_get_an_error_naming_the_file(tiny_fern: Path, tmp_path: Path):
    data = tmp_path / "mixed"
    shutil.copytree(tiny_fern, data)
    odd = data / "images" / "image003.png"
    Image.open(odd).resize((40, 30)).save(odd)
    with pytest.raises(ValueError, match=r"image003\.png is 40x30 but its camera .* says 32x24"):
        make_datamanager(data)
    # per-frame intrinsics that match the odd image: the error is then about mixing sizes
    meta = json.loads((data / "transforms.json").read_text())
    intrinsics = {k: meta.pop(k) for k in ("w", "h", "fl_x", "fl_y", "cx", "cy")}
    for frame in meta["frames"]:
        frame.update(intrinsics)
        if frame["file_path"].endswith("image003.png"):
            frame.update(w=40, h=30, fl_x=intrinsics["fl_x"] * 1.25, fl_y=intrinsics["fl_y"] * 1.25, cx=20.0, cy=15.0)
    (data / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"most are 32x24 but 1 differ: .*image003\.png \(40x30\).*Resize or crop"):
        make_datamanager(data)



def test_sfm_points_seed_the_model_in_the_dataparser_frame(tiny_fern: Path):
    from nerfstudio.data.utils.colmap_parsing_utils import read_points3D_binary

    from conftest import FERN

    outputs = make_datamanager(tiny_fern).train_dataparser_outputs
    points = read_points3D_binary(FERN / "sparse" / "0" / "points3D.bin")
    xyz = torch.tensor([p.xyz for p in points.values()], dtype=torch.float32)
    rgb = torch.tensor([p.rgb for p in points.values()], dtype=torch.uint8)
    expected = (torch.cat((xyz, torch.ones_like(xyz[:, :1])), -1) @ outputs.dataparser_transform.T) * outputs.dataparser_scale
    assert torch.allclose(outputs.metadata["points3D_xyz"], expected, atol=1e-5)
    assert torch.equal(outputs.metadata["points3D_rgb"], rgb)


def test_ns_eval_scores_against_the_gt_at_hr_when_the_dataset_has_it(tiny_fern: Path, tmp_path: Path):
    from threedsr_ns.evaluation import read_image

    dm = ThreeDSRDataManagerConfig(data=tiny_fern).setup(device="cpu", test_mode="test")
    dm.enter_hr(4)
    assert dm.eval_has_gt
    for f, data in zip(dm.eval_dataset.image_filenames, dm.cached_eval):
        gt = read_image(tiny_fern / "gt" / Path(f).name)
        assert data["image"].shape == (96, 128, 3) and torch.allclose(data["image"].float() / 255, gt, atol=1 / 255)
    no_gt = tmp_path / "fern"
    shutil.copytree(tiny_fern, no_gt)
    (no_gt / "transforms_gt.json").unlink()
    dm = ThreeDSRDataManagerConfig(data=no_gt).setup(device="cpu", test_mode="test")
    dm.enter_hr(4)
    assert not dm.eval_has_gt and dm.cached_eval[0]["image"].shape == (24, 32, 3)  # LR fidelity, said in one line
