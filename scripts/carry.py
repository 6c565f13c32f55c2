"""Take a folder to the GPU machine in pieces that fit the device calls' carry limit, and put it back together there.

A device call brings the working tree plus at most 64 MiB of ignored paths; a dataset at the paper's protocol, a
warm-up checkpoint or the metric weights are bigger, so they travel over several calls, one unit each:

    python scripts/carry.py pack .data/pp/fern .data/carry --name fern-lr --exclude 'gt/*'   # here; prints the units
    python scripts/carry.py pack .data/pp/fern .data/carry --name fern-gt --include 'gt/*'
    python scripts/carry.py unpack .data/carry/fern-lr.00 /root/fern    # there, one call per unit (carry: that unit)

`pack` puts the files of SRC (relative paths kept; --include / --exclude: shell patterns on those paths) into units
OUT/NAME.00, NAME.01, ... of at most --max-mb each, as hard links where it can (no disk used). A file bigger than a
unit is cut into <path>.part.000, .001, ... Every unit carries NAME.manifest.json: each file's size and sha256 and
where its parts went.

`unpack UNIT DEST` copies the unit's parts into DEST.carry-NAME (a staging folder beside DEST), joins each file once
all of its parts are there, checks its size and sha256, and says what is still missing. When the last file of the pack
is in: if DEST does not exist, the staging folder becomes DEST in one rename, so a job waiting for DEST/split.json
never starts on half a dataset; if DEST exists (a second pack into the same folder), each file is moved into it.
Unpacking a unit again is harmless.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple


MANIFEST_SUFFIX = ".manifest.json"
PART = ".part."


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _selected(rel: str, include: List[str], exclude: List[str]) -> bool:
    if include and not any(fnmatch.fnmatch(rel, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(rel, p) for p in exclude)


def pack(src: Path, out: Path, name: str, max_bytes: int, include: List[str] = (),
         exclude: List[str] = ()) -> List[Path]:
    """Split the files under `src` into units out/name.NN of at most `max_bytes` each; returns the unit folders."""
    from threedsr_ns.artifacts import link_or_copy  # here, not at the top: unpack runs with the standard library only

    if not src.is_dir():
        raise SystemExit(f"carry pack: {src} is not a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and _selected(p.relative_to(src).as_posix(),
                                                                          list(include), list(exclude)))
    if not files:
        raise SystemExit(f"carry pack: no files under {src} match --include {list(include)} --exclude {list(exclude)}")
    manifest_room = 4096 + 200 * len(files)  # the manifest rides in every unit
    room = max_bytes - manifest_room
    if room < 1 << 16:
        raise SystemExit(f"carry pack: --max-mb {max_bytes / 1e6:g} leaves no room beside the manifest")
    # pieces: (relative path of the piece, source file, offset, length)
    pieces: List[Tuple[str, Path, int, int]] = []
    entries: Dict[str, dict] = {}
    for path in files:
        rel, size = path.relative_to(src).as_posix(), path.stat().st_size
        if size <= room:
            pieces.append((rel, path, 0, size))
            entries[rel] = {"size": size, "sha256": sha256(path), "parts": [rel]}
        else:
            names = [f"{rel}{PART}{i:03d}" for i in range((size + room - 1) // room)]
            pieces += [(n, path, i * room, min(room, size - i * room)) for i, n in enumerate(names)]
            entries[rel] = {"size": size, "sha256": sha256(path), "parts": names}
    units: List[List[Tuple[str, Path, int, int]]] = []
    for piece in sorted(pieces, key=lambda p: -p[3]):  # first fit, largest first: few units
        for unit in units:
            if sum(p[3] for p in unit) + piece[3] <= room:
                unit.append(piece)
                break
        else:
            units.append([piece])
    dirs = []
    for i, unit in enumerate(units):
        udir = out / f"{name}.{i:02d}"
        if udir.exists():
            shutil.rmtree(udir)
        for rel, path, offset, length in unit:
            (udir / rel).parent.mkdir(parents=True, exist_ok=True)
            if offset == 0 and length == path.stat().st_size:
                link_or_copy(path, udir / rel)
            else:
                with open(path, "rb") as f_in, open(udir / rel, "wb") as f_out:
                    f_in.seek(offset)
                    f_out.write(f_in.read(length))
        dirs.append(udir)
    manifest = {"name": name, "units": len(units), "files": entries}
    for udir in dirs:
        (udir / f"{name}{MANIFEST_SUFFIX}").write_text(json.dumps(manifest, indent=1) + "\n")
    for udir in dirs:
        total = sum(p.stat().st_size for p in udir.rglob("*") if p.is_file())
        if total > max_bytes:  # the manifest's room was an estimate (very long paths)
            raise SystemExit(f"carry pack: {udir} came to {total / 1e6:.2f} MB, over --max-mb {max_bytes / 1e6:g}; "
                             f"pack again with a smaller --max-mb")
        print(f"{udir}  {total / 1e6:.1f} MB")
    print(f"{len(files)} files of {src} in {len(dirs)} unit(s) of at most {max_bytes / 1e6:g} MB")
    return dirs


def _manifest(unit: Path) -> dict:
    found = list(unit.glob(f"*{MANIFEST_SUFFIX}"))
    if len(found) != 1:
        raise SystemExit(f"carry unpack: {unit} holds {len(found)} *{MANIFEST_SUFFIX} files, not one: is it a unit "
                         f"made by `python scripts/carry.py pack`?")
    return json.loads(found[0].read_text())


def unpack(unit: Path, dest: Path) -> bool:
    """Bring one unit into `dest` (module docstring); True once the whole pack is in place."""
    manifest = _manifest(unit)
    name, files = manifest["name"], manifest["files"]
    stage = dest.parent / f"{dest.name}.carry-{name}"
    stage.mkdir(parents=True, exist_ok=True)
    for path in unit.rglob("*"):
        if path.is_file() and not path.name.endswith(MANIFEST_SUFFIX):
            target = stage / path.relative_to(unit)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    missing = []
    for rel, entry in files.items():
        whole = stage / rel
        if whole.is_file() and whole.stat().st_size == entry["size"]:
            pass  # travelled in one piece, or joined by an earlier call
        elif entry["parts"] != [rel] and all((stage / p).is_file() for p in entry["parts"]):
            with open(whole, "wb") as f_out:
                for p in entry["parts"]:
                    with open(stage / p, "rb") as f_in:
                        shutil.copyfileobj(f_in, f_out)
            for p in entry["parts"]:
                (stage / p).unlink()
        elif (dest / rel).is_file() and (dest / rel).stat().st_size == entry["size"] and not whole.exists():
            continue  # moved into an existing DEST by an earlier call
        else:
            missing.append(rel)
            continue
        if whole.stat().st_size != entry["size"] or sha256(whole) != entry["sha256"]:
            whole.unlink()
            raise SystemExit(f"carry unpack: {rel} of pack {name!r} is damaged (size or sha256 differs from its "
                             f"manifest); pack it again with `python scripts/carry.py pack` and carry its units anew")
    if missing:
        print(f"{unit.name}: in {stage}; {len(missing)} of {len(files)} file(s) of pack {name!r} still to come "
              f"(e.g. {missing[0]})")
        return False
    if not dest.exists():
        stage.rename(dest)
    else:
        for rel in files:
            if (stage / rel).is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, dest / rel)
        shutil.rmtree(stage)
    print(f"pack {name!r} complete: {len(files)} file(s) in {dest}")
    return True


def main(argv: Optional[List[str]] = None) -> Optional[bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="split SRC into units OUT/NAME.NN of at most --max-mb each")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", required=True, help="the units' name: NAME.00, NAME.01, ...")
    p.add_argument("--max-mb", type=float, default=26.0,
                   help="largest unit in MB (1e6 bytes); 26 fits beside a ~40 MB checkout under a call's 64 MiB")
    p.add_argument("--include", nargs="*", default=[], help="only paths (relative to SRC) matching these patterns")
    p.add_argument("--exclude", nargs="*", default=[], help="leave out paths matching these shell patterns")
    u = sub.add_parser("unpack", help="bring one unit into DEST (assembled once its whole pack has arrived)")
    u.add_argument("unit", type=Path)
    u.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.src, args.out, args.name, int(args.max_mb * 1e6), args.include, args.exclude)
        return None
    return unpack(args.unit, args.dest)


if __name__ == "__main__":
    main()
