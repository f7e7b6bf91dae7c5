"""Make Cityscapes' ``*_gtFine_labelTrainIds.png`` (what mmseg's CityscapesDataset reads) from gtFine.

    python tools/convert_cityscapes.py /data/cityscapes [--nproc 8] [--resume]

ROOT is the folder holding ``leftImg8bit/`` and ``gtFine/`` as unzipped from the official
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``. Every annotation
``gtFine/<split>/<city>/<stem>_gtFine_{labelIds.png,polygons.json}`` gets a
``<stem>_gtFine_labelTrainIds.png`` beside it: the 19 training classes as 0-18, everything else
255 (ignored), by the official table (``cityscapesscripts.helpers.labels``).

Source: ``_labelIds.png`` when it is there, mapped pixel by pixel through that table (a lookup,
10-100x faster than drawing polygons, and the same result: the official labelIds images are the
polygons drawn with ids, in the order trainIds would be drawn); ``_polygons.json`` through
cityscapesscripts' ``createLabelImage(..., "trainIds")`` where it is all there is.

Each file is written under a temporary name and renamed when complete, so a killed run leaves no
half-written trainIds file. ``--resume`` keeps the ones already there and intact (decode, are
8-bit single channel, have the annotation's size and only trainIds values) and converts the rest.
Bad annotations are listed at the end (exit status 1), after every other file was converted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

LABEL_IDS = "_gtFine_labelIds.png"
POLYGONS = "_gtFine_polygons.json"
TRAIN_IDS = "_gtFine_labelTrainIds.png"
IGNORE = 255


class Task(NamedTuple):
    """One trainIds file to make: its source annotation and whether a good one may be kept."""

    source: Path
    out: Path
    resume: bool


class Result(NamedTuple):
    """What happened to one task: ``converted``, ``kept`` (--resume) or ``failed`` (error)."""

    status: str
    kind: str
    error: str = ""


def train_id_lut() -> np.ndarray:
    """labelId -> trainId for every 8-bit value; -1 for values no Cityscapes label has. Labels
    with trainId -1 or 255 (license plate, the void classes) map to 255, as the official
    createTrainIdLabelImgs does."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, -1, dtype=np.int16)
    for label in labels:
        if 0 <= label.id < 256:
            lut[label.id] = label.trainId if 0 <= label.trainId < IGNORE else IGNORE
    return lut


def valid_train_ids() -> np.ndarray:
    """A 256-entry mask of the values a trainIds file may hold (the table's trainIds, 255)."""
    lut = train_id_lut()
    valid = np.zeros(256, dtype=bool)
    valid[lut[lut >= 0]] = True
    return valid


def find_tasks(root: Path, resume: bool) -> list[Task]:
    """One task per annotated stem under ``root/gtFine/<split>/<city>/``, labelIds preferred."""
    gt = root / "gtFine"
    if not gt.is_dir():
        raise SystemExit(
            f"convert_cityscapes: error: {gt} not found. Unzip the official gtFine_trainvaltest.zip "
            f"there (unzip gtFine_trainvaltest.zip -d {root}), then run this again."
        )
    sources: dict[Path, Path] = {}
    for suffix in (POLYGONS, LABEL_IDS):  # labelIds last: it replaces the polygons of a stem
        for path in gt.glob(f"*/*/*{suffix}"):
            sources[path.with_name(path.name[: -len(suffix)])] = path
    if not sources:
        raise SystemExit(
            f"convert_cityscapes: error: no *{LABEL_IDS} or *{POLYGONS} under {gt}/<split>/<city>/; "
            "is it the unzipped gtFine_trainvaltest.zip?"
        )
    return [
        Task(src, stem.with_name(stem.name + TRAIN_IDS), resume)
        for stem, src in sorted(sources.items())
    ]


def source_size(source: Path) -> tuple[int, int]:
    """(width, height) of an annotation, read from the PNG header or the JSON."""
    if source.name.endswith(LABEL_IDS):
        with Image.open(source) as image:
            return image.size
    meta = json.loads(source.read_text())
    return int(meta["imgWidth"]), int(meta["imgHeight"])


def is_intact(out: Path, source: Path, valid: np.ndarray) -> bool:
    """Whether ``out`` is a finished trainIds image of ``source``: it decodes, is 8-bit single
    channel, has the annotation's size and holds only trainIds. Reads the whole image, since a
    truncated PNG opens fine and fails only when decoded."""
    if not out.is_file():
        return False
    try:
        with Image.open(out) as image:
            image.load()
            if image.mode != "L" or image.size != source_size(source):
                return False
            values = np.asarray(image)
    except (OSError, ValueError, KeyError, SyntaxError):
        return False
    return bool(valid[np.flatnonzero(np.bincount(values.ravel(), minlength=256))].all())


def from_label_ids(source: Path, lut: np.ndarray) -> Image.Image:
    """trainIds of a ``_labelIds.png`` via the official table; unknown ids are an error."""
    with Image.open(source) as image:
        ids = np.asarray(image)
    if ids.ndim != 2 or ids.dtype != np.uint8:
        raise ValueError(f"{source}: not an 8-bit single-channel labelIds image ({ids.dtype}, "
                         f"shape {ids.shape})")  # fmt: skip
    train = lut[ids]
    if (train < 0).any():
        unknown = sorted(int(v) for v in np.unique(ids[train < 0]))
        raise ValueError(f"{source}: label ids {unknown} are not Cityscapes labelIds (0-33)")
    return Image.fromarray(train.astype(np.uint8))  # 2-D uint8: mode L


def from_polygons(source: Path) -> Image.Image:
    """trainIds of a ``_polygons.json`` by cityscapesscripts' own drawing. Unknown labels are
    checked first: cityscapesscripts would ``sys.exit`` on them."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import name2label
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    annotation = Annotation()
    annotation.fromJsonFile(str(source))
    for obj in annotation.objects:
        name = obj.label
        if name not in name2label and name.endswith("group"):
            name = name[: -len("group")]
        if not obj.deleted and name not in name2label:
            raise ValueError(f"{source}: label {obj.label!r} is not a Cityscapes label")
    return createLabelImage(annotation, "trainIds")


def write_atomic(image: Image.Image, out: Path) -> None:
    """Save under ``<out>.part`` and rename: a reader never sees a half-written file."""
    part = out.with_name(out.name + ".part")
    image.save(part, format="PNG")
    os.replace(part, out)


_LUT: np.ndarray | None = None
_VALID: np.ndarray | None = None


def convert(task: Task) -> Result:
    """Make (or, with --resume, keep) one trainIds file. Errors come back as a result so one bad
    annotation does not stop the others."""
    global _LUT, _VALID
    if _LUT is None or _VALID is None:
        _LUT, _VALID = train_id_lut(), valid_train_ids()
    kind = "labelIds" if task.source.name.endswith(LABEL_IDS) else "polygons"
    try:
        if task.resume and is_intact(task.out, task.source, _VALID):
            return Result("kept", kind)
        if kind == "labelIds":
            image = from_label_ids(task.source, _LUT)
        else:
            image = from_polygons(task.source)
        write_atomic(image, task.out)
    except (OSError, ValueError, KeyError) as err:
        message = str(err) if str(task.source) in str(err) else f"{task.source}: {err}"
        return Result("failed", kind, message)
    return Result("converted", kind)


def run_all(tasks: list[Task], nproc: int, progress: bool) -> list[Result]:
    """Every task, in ``nproc`` processes (1: in this one), with a progress bar."""
    bar = tqdm(total=len(tasks), unit="file", desc="gtFine -> labelTrainIds", disable=not progress)
    results: list[Result] = []
    with bar:
        if nproc <= 1:
            outcomes: Iterable[Result] = map(convert, tasks)
            for result in outcomes:
                results.append(result)
                bar.update()
        else:
            with Pool(nproc) as pool:
                for result in pool.imap_unordered(convert, tasks, chunksize=8):
                    results.append(result)
                    bar.update()
    return results


def summary(results: list[Result]) -> str:
    """One line: how many were converted (by source), kept and failed."""
    counts = Counter(r.status for r in results)
    kinds = Counter(r.kind for r in results if r.status == "converted")
    by_kind = ", ".join(f"{kinds[k]} from {k}" for k in ("labelIds", "polygons") if kinds[k])
    return (
        f"convert_cityscapes: converted {counts['converted']}"
        + (f" ({by_kind})" if by_kind else "")
        + f", kept {counts['kept']} already converted, failed {counts['failed']}, "
        f"of {len(results)} annotations"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="Cityscapes root (holds leftImg8bit/, gtFine/)")
    parser.add_argument("--nproc", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (default: min(8, CPUs))")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="keep trainIds files already there and intact, convert the rest")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = find_tasks(args.root, args.resume)
    results = run_all(tasks, args.nproc, progress=not args.no_progress)
    print(summary(results))
    failed = [r.error for r in results if r.status == "failed"]
    if failed:
        print("convert_cityscapes: error: these annotations could not be converted:\n  "
              + "\n  ".join(sorted(failed)), file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
