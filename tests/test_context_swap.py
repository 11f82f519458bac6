"""Context swap (data/context_swap.py): the face centre is kept, the context comes from another
image of the batch, and the config keys are checked at load."""

from __future__ import annotations

import pytest
import torch

from backbone_ssl.config import load_config
from backbone_ssl.data.context_swap import context_swap, disk_masks
from backbone_ssl.errors import UserError
from backbone_ssl.methods.dino import DINOConfig


def _batch(b: int = 6, size: int = 16) -> torch.Tensor:
    # sample i is constant i: every pixel says which image it came from
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, size, size).clone()


def test_p_zero_is_identity() -> None:
    x = _batch()
    out = context_swap([x, x], 0.0)
    assert all(torch.equal(o, x) for o in out)


def test_centre_kept_border_from_another_image() -> None:
    x = _batch(b=8, size=32)
    g = torch.Generator().manual_seed(0)
    out = context_swap([x, x.clone()], 1.0, radius=(0.5, 0.5), softness=0.1, generator=g)
    for v in out:
        centre = v[:, :, 16, 16]
        corner = v[:, :, 0, 0]
        assert torch.equal(centre, x[:, :, 16, 16])  # the face stays
        assert not torch.equal(corner, x[:, :, 0, 0])
        assert (corner != x[:, :, 0, 0]).all()  # never its own context
        assert set(corner[:, 0].tolist()) <= set(range(8))  # a real image of the batch
    # each view draws its own donor shift, so over several draws the two views disagree
    shifts = set()
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        a, b = context_swap([x, x], 1.0, generator=g)
        shifts.add(bool(torch.equal(a[:, :, 0, 0], b[:, :, 0, 0])))
    assert False in shifts


def test_mask_is_soft_and_centred() -> None:
    m = disk_masks(1, 20, torch.tensor([0.4]), 0.2, torch.device("cpu"))[0, 0]
    assert m[10, 10] == 1 and m[0, 0] == 0
    assert ((m > 0) & (m < 1)).any()  # a soft edge, not a hard cut
    assert torch.allclose(m, m.flip(0)) and torch.allclose(m, m.flip(1))


def test_differing_view_sizes() -> None:
    out = context_swap([_batch(size=16), _batch(size=8)], 1.0)
    assert [o.shape[-1] for o in out] == [16, 8]


@pytest.mark.parametrize("override", ["data.context_swap=1.5",
                                      "data.context_swap_radius=[0.9,0.2]"])
def test_bad_keys_rejected(override: str) -> None:
    with pytest.raises(UserError, match="data.context_swap"):
        load_config(DINOConfig, "dino", overrides=[override])
