from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from threedsr_ns import artifacts
from threedsr_ns.artifacts import ArtifactWriter, contact_sheet, save_sr_targets, to_uint8


def test_contact_sheet_places_lr_sr_and_render_in_columns():
    n, h, w = 3, 8, 10
    lr = torch.zeros(n, 3, h, w)
    sr_first = torch.full((n, 3, 4 * h, 4 * w), 0.25)
    sr_now = torch.full((n, 3, 4 * h, 4 * w), 0.5)
    render = torch.ones(n, 3, 4 * h, 4 * w)
    sheet = np.asarray(contact_sheet(lr, sr_first, sr_now, render, max_views=2, cell_width=40))
    cell_h = 32  # 40 * 32/40
    assert sheet.shape == (18 + 2 * cell_h, 4 * 40, 3)
    row = sheet[18 + cell_h + cell_h // 2]  # middle of the second view's row
    assert [int(row[j * 40 + 20, 0]) for j in range(4)] == [0, 64, 128, 255]


def test_sr_targets_are_saved_under_the_input_names(tmp_path):
    targets = torch.rand(2, 3, 12, 16)
    save_sr_targets(tmp_path, targets, ["images/a.jpg", "images/b.png"])
    saved = np.asarray(Image.open(tmp_path / "b.png"))
    assert saved.shape == (12, 16, 3)
    assert np.abs(saved / 255.0 - targets[1].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_the_background_writer_writes_what_was_queued_even_after_the_source_changes(tmp_path):
    targets = torch.rand(3, 3, 20, 24)
    expected = to_uint8(targets)
    writer = ArtifactWriter()
    sheet = Image.new("RGB", (8, 6), "white")
    writer.submit(tmp_path / "contact_sheet_step1.png", sheet, tmp_path / "sr_targets" / "step1", targets,
                  ["images/a.jpg", "images/b.jpg", "images/c.jpg"])
    targets.zero_()  # training swaps new targets in while the writer works: the copy taken at submit is written
    writer.submit(tmp_path / "contact_sheet_step2.png", sheet)  # targets unchanged: the sheet only
    writer.wait()
    for i, name in enumerate("abc"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "sr_targets" / "step1" / f"{name}.png")), expected[i])
    assert (tmp_path / "contact_sheet_step2.png").is_file() and not (tmp_path / "sr_targets" / "step2").exists()


def test_a_step_waits_for_the_previous_steps_pictures_so_one_copy_at_most_waits(tmp_path, monkeypatch):
    release, events = threading.Event(), []

    def slow_save(folder, images, names):
        events.append("first write starts")
        release.wait(10)
        events.append("first write ends")

    monkeypatch.setattr(artifacts, "save_sr_targets", slow_save)
    writer = ArtifactWriter()
    sheet = Image.new("RGB", (4, 4))
    writer.submit(tmp_path / "s1.png", sheet, tmp_path / "step1", torch.rand(1, 3, 4, 4), ["a.png"])
    threading.Timer(0.3, release.set).start()
    writer.submit(tmp_path / "s2.png", sheet)  # returns only once step 1's pictures are written
    assert events == ["first write starts", "first write ends"]
    writer.wait()
    assert (tmp_path / "s1.png").is_file() and (tmp_path / "s2.png").is_file()


def test_a_failed_background_write_is_raised_in_the_training_thread_naming_the_file(tmp_path):
    blocked = tmp_path / "sr_targets"
    blocked.write_text("a file where the folder should be")
    writer = ArtifactWriter()
    writer.submit(tmp_path / "sheet.png", Image.new("RGB", (4, 4)), blocked / "step1", torch.zeros(1, 3, 4, 4), ["a.png"])
    with pytest.raises(OSError, match=r"sr_targets/step1: could not write the 3dsr pictures.*save-artifacts False"):
        writer.wait()
    writer.submit(tmp_path / "sheet.png", Image.new("RGB", (4, 4)))  # the writer goes on after reporting it
    writer.wait()
    assert (tmp_path / "sheet.png").is_file()
