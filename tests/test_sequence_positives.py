"""Sequence positives (data/sequence_positives.py): window candidates in reading order, mutual
nearest-neighbour filtering, view 1 from the partner, the per-epoch refresh and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from lightly.transforms.multi_view_transform import MultiViewTransform
from PIL import Image
from torchvision.transforms import v2

from backbone_ssl.config import load_config
from backbone_ssl.data.datasets import ImageFolderDataset
from backbone_ssl.data.sequence_positives import (
    SequencePairViews,
    mutual_nn_partners,
    refresh_partners,
    window_candidates,
)
from backbone_ssl.errors import UserError
from backbone_ssl.methods.simclr import SimCLRConfig


def _faces(root: Path, names: dict[str, tuple[int, int, int]]) -> ImageFolderDataset:
    """``faces/<book>/<page>_<panel>_<k>.jpg`` -> solid colour files; returns the folder dataset."""
    for rel, colour in names.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(path.with_suffix(".png"))
    return ImageFolderDataset(root)


def _index(ds: ImageFolderDataset, rel: str) -> int:
    return [str(p.relative_to(ds.root).with_suffix("")) for p in ds.paths].index(rel)


def test_candidates_follow_reading_order_within_one_book(tmp_path):
    grey = (128, 128, 128)
    ds = _faces(tmp_path, {f"{r}.png": grey for r in (
        "a/0_1_0", "a/0_2_0", "a/0_2_1", "a/0_10_0", "a/1_1_0", "b/0_3_0")})
    cand = window_candidates(ds.paths, 1)
    name = {i: str(p.relative_to(tmp_path).with_suffix("")) for i, p in enumerate(ds.paths)}

    def of(rel: str) -> set[str]:
        return {name[j] for j in cand[_index(ds, rel)]}

    # reading order of book a: 0_1, 0_2, 0_10 (numeric, not "0_10" < "0_2"), then page 1
    assert of("a/0_1_0") == {"a/0_2_0", "a/0_2_1"}  # not its own panel, not two panels away
    assert of("a/0_2_0") == {"a/0_1_0", "a/0_10_0"}  # 0_2_1 is the same panel: another character
    assert of("a/0_10_0") == {"a/0_2_0", "a/0_2_1", "a/1_1_0"}
    assert of("b/0_3_0") == set()  # alone in its book
    assert {name[j] for j in window_candidates(ds.paths, 2)[_index(ds, "a/0_1_0")]} == {
        "a/0_2_0", "a/0_2_1", "a/0_10_0"}


def test_mutual_nearest_neighbour_keeps_only_pairs_that_choose_each_other():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]])
    cand = [[1, 2], [0, 3], [3], [1, 2]]
    # nearest candidate: 0 -> 1, 1 -> 0, 2 -> 3, 3 -> 2 (cos .6 with 1 ... vs .8 with 2)
    assert mutual_nn_partners(z, cand, mutual=False).tolist() == [1, 0, 3, 2]
    cand[3] = [1]  # now 3 -> 1 but 1 -> 0: 3 loses its partner, and 2 -> 3 is not mutual
    assert mutual_nn_partners(z, cand, mutual=True).tolist() == [1, 0, -1, -1]
    assert mutual_nn_partners(z, [[], [], [], []]).tolist() == [-1, -1, -1, -1]


def _views(ds: ImageFolderDataset, p: float) -> SequencePairViews:
    tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return SequencePairViews(ds, MultiViewTransform([tf, tf]), p=p, window=1)


def test_view_one_comes_from_the_partner_and_view_zero_stays(tmp_path):
    ds = _faces(tmp_path, {"a/0_1_0.png": (255, 0, 0), "a/0_2_0.png": (0, 0, 255),
                           "a/0_5_0.png": (0, 255, 0)})
    red, blue = _index(ds, "a/0_1_0"), _index(ds, "a/0_2_0")
    views = _views(ds, p=1.0)
    views.partners[:] = torch.tensor([-1, -1, -1])
    views.partners[red] = blue
    (v0, v1), _, skipped = views[red]
    assert v0[0].mean() == 1.0 and v1[2].mean() == 1.0 and v1[0].mean() == 0.0  # red, blue
    assert skipped == 0
    (w0, w1), _, _ = _views(ds, p=0.0)[red]  # p = 0: both views from the face itself
    assert w1[0].mean() == 1.0
    unpaired = _index(ds, "a/0_5_0")
    (u0, u1), _, _ = views[unpaired]  # no partner: its own two views
    assert u1[1].mean() == 1.0


class MeanColour(nn.Module):
    """``[B,3,H,W]`` -> ``[B,3]`` mean colour: an embedding where equal colours are neighbours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_refresh_pairs_faces_that_look_alike_and_keeps_training_mode(tmp_path):
    red, blue = (250, 10, 10), (10, 10, 250)
    ds = _faces(tmp_path, {"a/0_1_0.png": red, "a/0_2_0.png": blue, "a/0_2_1.png": red,
                           "a/0_3_0.png": blue})
    views = _views(ds, p=1.0)
    assert (views.partners == -2).all()  # before the first refresh: any window candidate
    net = MeanColour().train()
    stats = refresh_partners(views, net, image_size=8, mutual=True, device=torch.device("cpu"))
    i = {r: _index(ds, r) for r in ("a/0_1_0", "a/0_2_0", "a/0_2_1", "a/0_3_0")}
    assert views.partners[i["a/0_1_0"]] == i["a/0_2_1"]  # red with red, one panel away
    assert views.partners[i["a/0_2_0"]] == i["a/0_3_0"]  # blue with blue
    assert stats == {"faces": 4, "with_candidates": 4, "with_partner": 4}
    assert net.training


def test_bad_input_is_one_clear_error(tmp_path):
    ds = _faces(tmp_path / "plain", {"x/cat.png": (1, 2, 3), "x/dog.png": (3, 2, 1)})
    with pytest.raises(UserError, match="within 1 panels"):
        _views(ds, p=0.5)
    with pytest.raises(UserError, match="plain data path"):
        load_config(SimCLRConfig, "simclr",
                    overrides=["data.sequence_positives=0.5", "data.cache=true"])
    with pytest.raises(UserError, match="sequence_positives"):
        load_config(SimCLRConfig, "simclr", overrides=["data.sequence_positives=1.5"])
