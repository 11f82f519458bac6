"""The helpers that have one home for the whole tree: [-1, 1] pixel conversions, the decode
retry, precision resolution."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from backbone_ssl.config import resolve_precision
from backbone_ssl.data.datasets import MAX_DECODE_ATTEMPTS, first_decodable
from backbone_ssl.data.signed import signed_transform, to_signed, to_unit


def _image(w: int = 37, h: int = 23, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_signed_conversions_round_trip_and_match_torchvision():
    img = _image()
    x = to_signed(img, 24)
    assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1
    # the same numbers as the torchvision pipeline the downstream tasks used before
    old = T.Compose([T.Resize((24, 24), interpolation=T.InterpolationMode.BICUBIC),
                     T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    assert torch.equal(x, old(img)) and torch.equal(signed_transform(24)(img), x)
    # no size: no resize; back to [0, 1] gives the plain tensor again
    assert torch.allclose(to_unit(to_signed(img)), TF.to_tensor(img), atol=1e-6)
    assert torch.equal(to_unit(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])),
                       torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    # unclamped (an encoder's input after DiffAugment): values and gradients pass unchanged
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0], requires_grad=True)
    y = to_unit(x, clamp=False)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([-1.0, 0.0, 0.5, 1.0, 1.5]))
    assert torch.equal(x.grad, torch.full((5,), 0.5))


def test_first_decodable_skips_broken_samples_and_wraps_around():
    broken = {2, 3, 9, 0}
    seen: list[int] = []

    def load(i: int) -> str:
        if i in broken:
            raise OSError(f"broken {i}")
        return f"sample {i}"

    def on_error(i: int, exc: Exception) -> None:
        seen.append(i)

    assert first_decodable(load, 2, 10, on_error) == (4, "sample 4", 2) and seen == [2, 3]
    seen.clear()
    assert first_decodable(load, 9, 10, on_error) == (1, "sample 1", 2) and seen == [9, 0]
    seen.clear()
    broken.add(1)  # a dataset of 3 all broken: each tried once, then None
    assert first_decodable(load, 2, 3, on_error) is None and seen == [2, 0, 1]


def test_first_decodable_gives_up_after_the_attempt_limit():
    calls: list[int] = []

    def load(i: int) -> None:
        calls.append(i)
        raise ValueError("broken")

    assert first_decodable(load, 5, 1000, lambda i, e: None) is None
    assert calls == list(range(5, 5 + MAX_DECODE_ATTEMPTS))
    with pytest.raises(KeyError):  # anything but a decode error is not swallowed
        first_decodable(lambda i: {}[i], 0, 3, lambda i, e: None)


@pytest.mark.parametrize("precision, accelerator, expected", [
    ("auto", "cpu", "32-true"),
    ("auto", "gpu", "bf16-mixed"),
    ("auto", "cuda", "bf16-mixed"),
    ("16-mixed", "cpu", "16-mixed"),
    ("32-true", "gpu", "32-true"),
])
def test_resolve_precision(precision, accelerator, expected):
    cfg = SimpleNamespace(trainer=SimpleNamespace(precision=precision, accelerator=accelerator))
    assert resolve_precision(cfg) == expected
