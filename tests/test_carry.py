"""scripts/carry.py: a folder packed into units under a size bound comes back byte for byte, only once it is whole."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest

from conftest import FERN, load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "carry.py"


@pytest.fixture()
def carry(monkeypatch):
    return load_script(SCRIPT, "carry_script", monkeypatch)


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """Real fern images (LR-sized PNG/JPEGs as they come) plus one file bigger than a unit, in a dataset's layout."""
    if not FERN.exists():
        pytest.skip(f"{FERN} not found: the tests read LLFF fern from ../shared/data")
    src = tmp_path / "fern"
    images = sorted((FERN / "images_8").iterdir())[:6]
    (src / "images").mkdir(parents=True)
    (src / "gt").mkdir()
    for i, path in enumerate(images):
        shutil.copy(path, src / ("gt" if i % 3 == 0 else "images") / path.name)
    (src / "ckpt.bin").write_bytes(b"".join(p.read_bytes() for p in images))  # ~ all of them at once
    (src / "split.json").write_text('{"train": [], "test": []}\n')
    return src


def _same_tree(a: Path, b: Path) -> bool:
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())  # noqa: E731
    return files(a) == files(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files(a))


def test_units_stay_under_the_bound_and_the_folder_appears_only_when_whole(carry, scene: Path, tmp_path: Path):
    sizes = sorted(p.stat().st_size for p in scene.rglob("*") if p.is_file())
    max_bytes = sizes[-2] + 20_000  # the largest image fits a unit, the checkpoint does not
    assert sizes[-1] > max_bytes
    units = carry.pack(scene, tmp_path / "out", "fern", max_bytes)
    assert len(units) >= 3
    for unit in units:
        assert sum(p.stat().st_size for p in unit.rglob("*") if p.is_file()) <= max_bytes
    assert any(p.name.startswith("ckpt.bin.part.") for p in units[0].parent.rglob("*"))  # the big file was cut
    dest = tmp_path / "there" / "fern"
    for unit in units[:-1]:
        assert carry.unpack(unit, dest) is False
        assert not dest.exists()  # a job waiting for dest/split.json must not start on part of the data
    # the units may come in any order, and one may come twice
    assert carry.unpack(units[-1], dest) is True
    assert _same_tree(scene, dest)
    assert carry.unpack(units[1], dest) is True
    assert _same_tree(scene, dest)
    assert not list(dest.parent.glob("*.carry-*"))  # no staging folder left behind


def test_a_second_pack_merges_into_the_folder_the_first_made(carry, scene: Path, tmp_path: Path):
    lr = carry.pack(scene, tmp_path / "out", "lr", 10**7, exclude=["gt/*"])
    gt = carry.pack(scene, tmp_path / "out", "gt", 10**7, include=["gt/*"])
    dest = tmp_path / "there" / "fern"
    assert all(carry.unpack(u, dest) for u in lr)
    assert not (dest / "gt").exists() and (dest / "split.json").is_file()
    assert all(carry.unpack(u, dest) for u in gt)
    assert _same_tree(scene, dest)


def test_a_damaged_piece_is_refused_naming_the_file(carry, scene: Path, tmp_path: Path):
    units = carry.pack(scene, tmp_path / "out", "fern", 10**8)
    assert len(units) == 1
    image = next(units[0].glob("images/*"))
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.unlink()  # a hard link into the source: replace it, never write through it
    image.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=f"images/{image.name} of pack 'fern' is damaged"):
        carry.unpack(units[0], tmp_path / "there" / "fern")
    assert not (tmp_path / "there" / "fern").exists()


def test_a_folder_that_is_no_unit_is_one_line(carry, tmp_path: Path):
    with pytest.raises(SystemExit, match="is it a unit made by"):
        carry.unpack(tmp_path, tmp_path / "dest")
