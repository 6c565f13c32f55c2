"""The 3DSR viewer panel against a real viser server: GUI values, frustum thumbnails as a new client sees them,
and the LR | SR | render side-by-side."""

from __future__ import annotations

import base64
import io
import socket
import time
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import torch
import viser
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerElement
from PIL import Image

from threedsr_ns import viewer as viewer_module
from threedsr_ns.phases import PhaseSchedule
from threedsr_ns.viewer import ThreeDSRViewerPanel, compose_side_by_side, format_seconds, mean_guidance_seconds

SCHEDULE = PhaseSchedule(warmup_iters=100, denoise_steps=4, phase_iters=50)
N, LR_H, LR_W, S = 3, 30, 40, 4
HR_H, HR_W = S * LR_H, S * LR_W


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    server = viser.ViserServer(host="127.0.0.1", port=_free_port(), verbose=False)
    yield server
    server.stop()


def _cameras(n: int = N) -> Cameras:
    return Cameras(camera_to_worlds=torch.eye(4)[:3].repeat(n, 1, 1), fx=50.0, fy=50.0, cx=LR_W / 2, cy=LR_H / 2,
                   width=LR_W, height=LR_H)


class _Data:
    """LR images (uint8, as nerfstudio caches them), SR targets and renders with one colour per view."""

    def __init__(self) -> None:
        colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        self.lr = (colours[:, None, None, :] * 255).to(torch.uint8).expand(N, LR_H, LR_W, 3).clone()
        self.sr = colours[:, None, None, :].expand(N, HR_H, HR_W, 3).clone() * 0.5
        self.rendered = []

    def render(self, i: int) -> torch.Tensor:
        self.rendered.append(i)
        return torch.full((HR_H, HR_W, 3), 0.25 * (i + 1))


def _panel(data: _Data, **kwargs) -> ThreeDSRViewerPanel:
    return ThreeDSRViewerPanel(SCHEDULE, ["a.png", "b.png", "c.png"], lr_image_fn=lambda i: data.lr[i],
                               sr_target_fn=lambda i: data.sr[i], render_fn=data.render, cameras=_cameras(),
                               upscale_factor=S, min_update_seconds=0.0, **kwargs)


def _install_like_nerfstudio(server: viser.ViserServer, pipeline: torch.nn.Module) -> list:
    """What nerfstudio 1.1.5's Viewer.__init__ does: parse_object the pipeline, install each element in folders."""
    elements = parse_object(pipeline, ViewerElement, "Custom Elements")
    with server.gui.add_folder("Custom Elements"):
        with server.gui.add_folder("threedsr_viewer"):
            for _, element in elements:
                element.install(server)
    return elements


def _messages_seen_by_a_new_client(port: int, seconds: float = 3.0) -> list:
    """Connect like a browser and decode what the server sends (its persistent state, culled by redundancy)."""
    from websockets.sync.client import connect

    out = []
    with connect(f"ws://127.0.0.1:{port}") as ws:
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                raw = ws.recv(timeout=0.5)
            except TimeoutError:
                if out:
                    break
                continue
            decoded = msgspec.msgpack.decode(raw)
            out.extend(decoded if isinstance(decoded, list) else [decoded])
    return out


def _decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_parse_object_finds_the_panel_elements_in_order_and_state_dict_is_unchanged(server):
    pipeline = torch.nn.Module()
    pipeline.threedsr_viewer = _panel(_Data())
    paths = [p for p, _ in parse_object(pipeline, ViewerElement, "Custom Elements")]
    assert paths == [f"Custom Elements/threedsr_viewer/{n}" for n in
                     ("gui_1_phase", "gui_2_phase_progress", "gui_3_run", "gui_4_eta", "gui_5_view", "gui_6_compare",
                      "gui_7_image")]
    assert pipeline.state_dict() == {}
    # a plain (non-Module) holder is not searched by nerfstudio: the reason the panel is an nn.Module
    holder = torch.nn.Module()
    holder.plain = SimpleNamespace(element=pipeline.threedsr_viewer.gui_1_phase)
    assert parse_object(holder, ViewerElement, "Custom Elements") == []


def test_progress_phase_and_eta_in_the_gui(server):
    panel = _panel(_Data())
    pipeline = torch.nn.Module()
    pipeline.threedsr_viewer = panel
    _install_like_nerfstudio(server, pipeline)
    assert panel.installed

    panel.update_progress(50, seconds_per_step=0.1)
    assert panel.gui_1_phase.gui_handle.value == "LR warm-up 50/100 (50%)"
    assert panel.gui_2_phase_progress.gui_handle.value == pytest.approx(50.0)
    assert panel.gui_3_run.gui_handle.value == "50/300 iterations (17%)"
    assert panel.gui_4_eta.gui_handle.value == "warm-up 5s, run 25s + 4 denoise steps (100 ms/it)"

    panel.on_guidance_start(2)
    assert panel.gui_1_phase.gui_handle.value.startswith("running denoise step 2/4")
    assert panel.gui_2_phase_progress.gui_handle.animated

    panel.update_progress(160, seconds_per_step=0.1, guidance_seconds=3.0)
    assert "denoise step 2/4" in panel.gui_1_phase.gui_handle.value
    assert panel.gui_1_phase.gui_handle.value == "denoise step 2/4, HR phase 10/50 (20%)"
    assert panel.gui_2_phase_progress.gui_handle.value == pytest.approx(20.0)
    assert not panel.gui_2_phase_progress.gui_handle.animated
    assert panel.gui_3_run.gui_handle.value == "160/300 iterations (53%)"
    # HR phase: 40 steps x 0.1 s; run: 140 x 0.1 s + 2 remaining denoise steps x 3 s
    assert panel.gui_4_eta.gui_handle.value == "HR phase 4s, run 20s (100 ms/it)"

    panel.update_progress(300)
    assert panel.gui_1_phase.gui_handle.value.startswith("done")
    assert panel.gui_2_phase_progress.gui_handle.value == 100.0


def test_eta_is_measured_without_the_intervals_that_hold_a_guidance_step(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 100.0, 101.0, 102.0])  # 10 steps/s; the 98 s jump is the guidance step at 100
    monkeypatch.setattr(viewer_module.time, "perf_counter", lambda: next(clock))
    panel = _panel(_Data())
    for step in (80, 90, 95, 105, 115, 125):
        panel.update_progress(step)
    assert panel.seconds_per_step == pytest.approx(0.1)
    assert mean_guidance_seconds([{"step": 1, "iteration": 100, "encode": 1.0, "denoise": 2.0}]) == 3.0
    assert mean_guidance_seconds([]) is None
    assert [format_seconds(s) for s in (45, 192, 3840)] == ["45s", "3m 12s", "1h 04m"]


def test_swap_sets_each_frustum_image_to_its_sr_target(server):
    data = _Data()
    clicks = []
    handles = {}
    for i in (0, 2):  # nerfstudio may draw only a subset of the train views
        handles[i] = server.scene.add_camera_frustum(
            f"/cameras/camera_{i:05d}", fov=1.0, aspect=LR_W / LR_H, scale=0.1,
            image=np.zeros((100, 133, 3), np.uint8), wxyz=(0.0, 1.0, 0.0, 0.0), position=(i, 2.0, 3.0))
        handles[i].on_click(lambda event, i=i: clicks.append(i))
    handles[2].visible = False  # "Hide Train Cams"
    viewer_state = SimpleNamespace(viser_server=server, camera_handles=handles,
                                   config=SimpleNamespace(camera_frustum_scale=0.1))
    old = dict(handles)
    panel = _panel(data)

    panel.on_swap(data.sr, viewer_state)

    for i in (0, 2):
        new = handles[i]
        assert new is not old[i] and new._impl.name == f"/cameras/camera_{i:05d}"
        np.testing.assert_allclose(new.position, (i, 2.0, 3.0))
        np.testing.assert_allclose(new.wxyz, (0.0, 1.0, 0.0, 0.0))
        assert len(new._impl.click_cb) == 1
        new._impl.click_cb[0](None)
    assert clicks == [0, 2] and handles[0].visible and not handles[2].visible

    frustums = {m["name"]: m for m in _messages_seen_by_a_new_client(server._websock_server._port)
                if m["type"] == "CameraFrustumMessage"}
    for i in (0, 2):
        sent = frustums[f"/cameras/camera_{i:05d}"]
        assert sent["fov"] == pytest.approx(2 * np.arctan((LR_W / 2) / 50.0))
        assert sent["aspect"] == pytest.approx(LR_W / LR_H)
        image = _decode_jpeg(sent["image_binary"])
        assert image.shape == (100, 133, 3)  # short side 100, as nerfstudio's own thumbnails
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), data.sr[i, 0, 0].numpy() * 255, atol=4)


def test_resume_swap_waits_for_the_viewer_cameras_and_no_viewer_is_a_no_op(server):
    data = _Data()
    handles = {}
    viewer_state = SimpleNamespace(viser_server=server, camera_handles=handles, config=SimpleNamespace())
    panel = _panel(data)
    panel.on_swap(data.sr)  # set_extra_state on a resume: before get_training_callbacks, before init_scene
    panel.attach(SimpleNamespace(viewer_state=viewer_state))
    handles[1] = first = server.scene.add_camera_frustum("/cameras/camera_00001", fov=1.0, aspect=1.0)
    panel.update_progress(0)
    assert handles[1] is not first

    off = _panel(data)  # --vis tensorboard: elements never installed, trainer.viewer_state is None
    off.on_swap(data.sr)
    off.attach(SimpleNamespace(viewer_state=None))
    off.on_swap(data.sr)
    off.update_progress(160, seconds_per_step=0.1)
    off.on_guidance_start(2)
    assert off._pending_targets is None and not off.installed and off.viewer_state is None
    assert off.gui_1_phase.value == SCHEDULE.describe(0)
    assert off.show_comparison(0).shape == (HR_H, 3 * HR_W + 4, 3)  # still composes; nothing to show it in


def test_compose_places_lr_sr_and_render_left_to_right():
    lr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    sr = torch.rand(8, 12, 3)
    render_lr_size = torch.rand(2, 3, 3)  # the LR warm-up renders at LR
    strip = compose_side_by_side(lr, sr, render_lr_size, (8, 12), gap=2)
    assert strip.shape == (8, 40, 3) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip[:, :12], np.repeat(np.repeat(lr, 4, 0), 4, 1))
    assert (strip[:, 12:14] == 255).all() and (strip[:, 26:28] == 255).all()
    np.testing.assert_array_equal(strip[:, 14:26], (sr.numpy() * 255 + 0.5).astype(np.uint8))
    expected_render = np.repeat(np.repeat((render_lr_size.numpy() * 255 + 0.5).astype(np.uint8), 4, 0), 4, 1)
    np.testing.assert_array_equal(strip[:, 28:40], expected_render)
    no_sr = compose_side_by_side(lr, None, render_lr_size, (8, 12), gap=2)
    assert (no_sr[:, 14:26] == round(0.15 * 255)).all()


def test_button_shows_the_chosen_view_side_by_side(server):
    data = _Data()
    panel = _panel(data)
    pipeline = torch.nn.Module()
    pipeline.threedsr_viewer = panel
    _install_like_nerfstudio(server, pipeline)
    panel.gui_5_view.value = "1: b.png"
    panel.gui_6_compare.cb_hook(panel.gui_6_compare)  # what a click runs
    assert data.rendered == [1]
    content = panel.gui_7_image.gui_handle.content
    assert content.startswith("**1: b.png**") and "data:image/jpeg;base64," in content
    shown = _decode_jpeg(base64.b64decode(content.split("base64,")[1].rstrip(")")))
    assert shown.shape == (HR_H, 3 * HR_W + 4, 3)
    lr_part, sr_part, render_part = shown[:, :HR_W], shown[:, HR_W + 2 : 2 * HR_W + 2], shown[:, 2 * HR_W + 4 :]
    np.testing.assert_allclose(lr_part[4:-4, 4:-4].reshape(-1, 3).mean(0), (0, 0, 255), atol=6)
    np.testing.assert_allclose(sr_part[4:-4, 4:-4].reshape(-1, 3).mean(0), (0, 0, 127.5), atol=6)
    np.testing.assert_allclose(render_part[4:-4, 4:-4].reshape(-1, 3).mean(0), (127.5,) * 3, atol=6)

    panel.on_swap(data.sr, SimpleNamespace(viser_server=server, camera_handles={}, config=SimpleNamespace()))
    assert panel.gui_7_image.gui_handle.content.startswith("_Shown before the last swap")

    wide = _panel(data, compare_max_panel_width=40)  # big scenes: panels shrink to fit the sidebar
    assert wide.show_comparison(2).shape == (30, 3 * 40 + 4, 3)


def test_for_pipeline_wires_a_pipeline_like_object():
    data = _Data()
    dm = SimpleNamespace(train_dataset=SimpleNamespace(image_filenames=["/x/a.png", "/x/b.png", "/x/c.png"],
                                                       cameras=_cameras()),
                         cached_train=[{"image": data.lr[i]} for i in range(N)], sr_targets=None)
    def render_train_views(views):  # ThreeDSRPipeline.render_train_views: [n, 3, H, W]
        return torch.stack([data.render(i) for i in views]).permute(0, 3, 1, 2)

    pipeline = SimpleNamespace(datamanager=dm, schedule=SCHEDULE, config=SimpleNamespace(upscale_factor=S),
                               render_train_views=render_train_views)
    panel = ThreeDSRViewerPanel.for_pipeline(pipeline)
    assert panel.gui_5_view.options[2] == "2: c.png"
    strip = panel.show_comparison(2)
    assert strip.shape == (HR_H, 3 * HR_W + 4, 3) and data.rendered == [2]
    assert (strip[:, HR_W + 2 : 2 * HR_W + 2] == round(0.15 * 255)).all()  # no SR target before the first swap
    dm.sr_targets = data.sr
    np.testing.assert_allclose(panel.show_comparison(0)[:, HR_W + 2 : 2 * HR_W + 2].reshape(-1, 3).mean(0),
                               (127.5, 0, 0), atol=1)
