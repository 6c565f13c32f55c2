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


def test_unchanged_targets_get_their_folder_as_links_to_the_last_written_pngs(tmp_path):
    targets = torch.rand(2, 3, 10, 12)
    names = ["images/a.jpg", "images/b.jpg"]
    writer = ArtifactWriter()
    sheet = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="final: no SR targets were written yet"):
        writer.submit(tmp_path / "s0.png", sheet, tmp_path / "final", None, names)
    writer.submit(tmp_path / "s1.png", sheet, tmp_path / "step1", targets, names)
    writer.submit(tmp_path / "s2.png", sheet)  # a step that left them as they were: no folder
    writer.submit(tmp_path / "s3.png", sheet, tmp_path / "final", None, names)
    writer.wait()
    assert not (tmp_path / "step2").exists()
    for name, expected in zip("ab", to_uint8(targets)):
        final = tmp_path / "final" / f"{name}.png"
        assert final.samefile(tmp_path / "step1" / f"{name}.png")
        assert np.array_equal(np.asarray(Image.open(final)), expected)


def test_links_fall_back_to_copies_where_the_file_system_cannot_link(tmp_path, monkeypatch):
    save_sr_targets(tmp_path / "step1", torch.rand(1, 3, 6, 8), ["a.png"])
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "a.png").write_bytes(b"stale")  # e.g. a resumed run writing its final folder again

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(artifacts.os, "link", no_links)
    artifacts.link_sr_targets(tmp_path / "step1", tmp_path / "final", ["a.png"])
    copied = tmp_path / "final" / "a.png"
    assert not copied.samefile(tmp_path / "step1" / "a.png")
    assert copied.read_bytes() == (tmp_path / "step1" / "a.png").read_bytes()
