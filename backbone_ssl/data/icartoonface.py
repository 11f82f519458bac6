"""Reader for the iCartoonFace recognition layout (``DESIGN.md``).

::

    ROOT/personai_icartoonface_rectrain/icartoonface_rectrain/<identity>/*.jpg
    ROOT/personai_icartoonface_rectest/icartoonface_rectest/*.jpg
    ROOT/personai_icartoonface_rectest/icartoonface_rectest_info.txt
        (or inside icartoonface_rectest/)

The info file mixes six-field rows ``img x1 y1 x2 y2 label`` (label ``-1`` = distractor) and
two-field rows ``probe mate``. Malformed rows (another field count, non-numbers, a pair naming an
image without a row, a duplicate image row) are counted and skipped. A test image is cropped to
its box when the box is given (``x2 > x1`` and ``y2 > y1`` after clipping to the image); a box of
``-1``/``0`` values means the whole image.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from backbone_ssl.data.datasets import ImageFolderDataset
from backbone_ssl.errors import UserError
from backbone_ssl.io import open_rgb

log = logging.getLogger(__name__)

TRAIN_SUBDIR = "personai_icartoonface_rectrain/icartoonface_rectrain"
TEST_SUBDIR = "personai_icartoonface_rectest/icartoonface_rectest"
INFO_NAME = "icartoonface_rectest_info.txt"
#: Where the info file may be, relative to ROOT (first found wins).
INFO_CANDIDATES = (f"personai_icartoonface_rectest/{INFO_NAME}", f"{TEST_SUBDIR}/{INFO_NAME}")


@dataclass
class TestImage:
    """One test image: file name, box (``None`` = whole image) and label (-1 = distractor)."""

    name: str
    box: tuple[int, int, int, int] | None
    label: int


@dataclass
class ICartoonFaceTest:
    """The parsed test set: images in info-file order, ``(probe, mate)`` index pairs, and the
    malformed rows skipped per reason."""

    root: Path
    images: list[TestImage]
    pairs: list[tuple[int, int]]
    skipped: Counter = field(default_factory=Counter)

    @property
    def labels(self) -> list[int]:
        return [im.label for im in self.images]

    @property
    def distractors(self) -> list[int]:
        """Indices of the distractor images (label -1)."""
        return [i for i, im in enumerate(self.images) if im.label == -1]


def train_dir(root: str | os.PathLike) -> Path:
    """The training identity folders of an iCartoonFace root."""
    path = Path(root) / TRAIN_SUBDIR
    if not path.is_dir():
        raise UserError(f"iCartoonFace training folder not found: {path}")
    return path


def train_dataset(root: str | os.PathLike, transform: Callable | None = None
                  ) -> ImageFolderDataset:
    """Training identities as an :class:`ImageFolderDataset` (items ``(image, identity)``)."""
    return ImageFolderDataset(train_dir(root), transform)


def find_info_file(root: str | os.PathLike) -> Path:
    """The test info file, at either of its known places."""
    for rel in INFO_CANDIDATES:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    raise UserError(f"iCartoonFace test info file not found under {root} (looked for "
                    f"{' and '.join(INFO_CANDIDATES)})")


def _parse_box(fields: list[str]) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = (round(float(v)) for v in fields)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 and x2 > 0 and y2 > 0 else None


def read_test(root: str | os.PathLike) -> ICartoonFaceTest:
    """Parse the test info file; images whose file is missing are dropped (with their pairs)."""
    root = Path(root)
    info = find_info_file(root)
    test_dir = root / TEST_SUBDIR
    if not test_dir.is_dir():
        raise UserError(f"iCartoonFace test image folder not found: {test_dir}")
    skipped: Counter[str] = Counter()
    images: list[TestImage] = []
    index: dict[str, int] = {}
    raw_pairs: list[tuple[str, str]] = []
    with open(info, errors="replace") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 2:
                raw_pairs.append((fields[0], fields[1]))
                continue
            if len(fields) != 6:
                skipped["bad_field_count"] += 1
                continue
            try:
                box, label = _parse_box(fields[1:5]), int(float(fields[5]))
            except ValueError:
                skipped["not_numeric"] += 1
                continue
            name = fields[0]
            if name in index:
                skipped["duplicate_image"] += 1
                continue
            if not (test_dir / name).is_file():
                skipped["missing_image"] += 1
                continue
            index[name] = len(images)
            images.append(TestImage(name, box, label))
    pairs = []
    for probe, mate in raw_pairs:
        if probe not in index or mate not in index or probe == mate:
            skipped["bad_pair"] += 1
            continue
        pairs.append((index[probe], index[mate]))
    if skipped:
        log.warning("iCartoonFace %s: skipped %s", info,
                    ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    if not images or not pairs:
        raise UserError(f"iCartoonFace {info}: {len(images)} usable image rows and {len(pairs)} "
                        f"usable probe/mate pairs; need at least one of each")
    return ICartoonFaceTest(root, images, pairs, skipped)


class TestImages(Dataset):
    """Test images in info-file order, cropped to their boxes.

    Item: ``(transform(PIL RGB crop), label)``.
    """

    def __init__(self, test: ICartoonFaceTest, transform: Callable | None = None) -> None:
        self.test = test
        self.dir = test.root / TEST_SUBDIR
        self.transform = transform

    def __len__(self) -> int:
        return len(self.test.images)

    def load(self, index: int):
        """The PIL RGB crop of image ``index`` (box clipped to the image)."""
        im = self.test.images[index]
        img = open_rgb(self.dir / im.name)
        if im.box is not None:
            x1, y1, x2, y2 = im.box
            box = (max(0, x1), max(0, y1), min(img.width, x2), min(img.height, y2))
            if box[2] > box[0] and box[3] > box[1]:
                img = img.crop(box)
        return img

    def __getitem__(self, index: int):
        img = self.load(index)
        return (self.transform(img) if self.transform else img), self.test.images[index].label


def drop_undecodable(test: ICartoonFaceTest) -> int:
    """Decode every test image once; drop the broken ones and their pairs. Returns how many
    images were dropped (also counted in ``test.skipped["undecodable_image"]``)."""
    from backbone_ssl.data.datasets import DECODE_ERRORS

    keep: list[int] = []
    for i, im in enumerate(test.images):
        try:
            open_rgb(test.root / TEST_SUBDIR / im.name)
        except DECODE_ERRORS as exc:
            log.warning("skipping undecodable iCartoonFace test image %s: %s", im.name, exc)
            continue
        keep.append(i)
    dropped = len(test.images) - len(keep)
    if dropped:
        remap = {old: new for new, old in enumerate(keep)}
        test.images = [test.images[i] for i in keep]
        n_pairs = len(test.pairs)
        test.pairs = [(remap[p], remap[m]) for p, m in test.pairs if p in remap and m in remap]
        test.skipped["undecodable_image"] += dropped
        test.skipped["bad_pair"] += n_pairs - len(test.pairs)
        if not test.pairs:
            raise UserError(f"iCartoonFace {test.root}: no probe/mate pair left after dropping "
                            f"{dropped} undecodable images")
    return dropped
