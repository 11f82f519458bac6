"""Batched tensor augmentations: lightly's view transforms, rendered for a whole batch at once.

``data.batch_augment: true`` splits each lightly view transform in two:

- in the DataLoader worker, per sample and under the sample's seed (so resume stays exact),
  :func:`draw_params` draws the random parameters with torchvision's own samplers
  (``RandomResizedCrop.get_params``, ``ColorJitter.get_params``): a few numbers per view;
- in the training process, after the batch reached the device, :func:`render` applies them to
  the cached ``[B,3,S,S]`` uint8 images with batched tensor ops: crop + resize + flip as one
  ``grid_sample`` (the transform's bicubic / bilinear), rotation, colour jitter in each sample's
  random order, grayscale, Gaussian blur (per-sample sigma, one grouped convolution),
  solarisation, normalisation.

The recipe (crop sizes and scales, probabilities, jitter ranges, sigmas, mean/std) is read from the
method's own lightly transform (:func:`recipes_from`), so both paths follow one source. They differ
only in arithmetic: float pixels instead of uint8 between steps, no antialiasing when a crop is
shrunk, a true Gaussian where PIL approximates it with box blurs (tests/test_fast_data.py checks
that the view statistics match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import Dataset

from backbone_ssl.errors import UserError

#: Layout of one view's parameter row (``[P]`` float32).
FIELDS = ("top", "left", "height", "width", "hflip", "vflip", "rotate", "angle", "jitter", "o0",
          "o1", "o2", "o3", "brightness", "contrast", "saturation", "hue", "gray", "blur", "sigma",
          "solarize")
COL = {name: i for i, name in enumerate(FIELDS)}
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


@dataclass(frozen=True)
class ViewRecipe:
    """One view transform of lightly, as numbers."""

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mode: str  # grid_sample mode: bicubic | bilinear
    hflip: float
    vflip: float
    rotate: float  # probability of a random rotation (nearest, black corners)
    degrees: tuple[float, float]
    jitter: float  # probability of colour jitter
    brightness: Optional[tuple[float, float]]
    contrast: Optional[tuple[float, float]]
    saturation: Optional[tuple[float, float]]
    hue: Optional[tuple[float, float]]
    gray: float
    blur: float
    sigmas: tuple[float, float]
    solarize: float
    threshold: float  # in [0, 1]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _range(value: Any) -> Optional[tuple[float, float]]:
    return None if value is None else (float(value[0]), float(value[1]))


def recipe_from(view: Any) -> ViewRecipe:
    """Read a lightly view transform (``DINOViewTransform``, ``BYOLView1Transform``, ...).

    Raises UserError for a step the batched path does not render (e.g. random rotation).
    """
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.rotation import RandomRotate, RandomRotateDegrees
    from lightly.transforms.solarize import RandomSolarization

    found: dict[str, Any] = {"hflip": 0.0, "vflip": 0.0, "rotate": 0.0, "degrees": (0.0, 0.0),
                             "jitter": 0.0, "brightness": None,
                             "contrast": None, "saturation": None, "hue": None, "gray": 0.0,
                             "blur": 0.0, "sigmas": (0.1, 2.0), "solarize": 0.0,
                             "threshold": 128 / 255, "mean": (0.0, 0.0, 0.0),
                             "std": (1.0, 1.0, 1.0)}
    steps = getattr(getattr(view, "transform", view), "transforms", None)
    if steps is None:
        raise UserError(f"data.batch_augment: cannot read the view transform {type(view).__name__}")
    for step in steps:
        name = type(step).__name__
        if name == "RandomResizedCrop":
            found.update(size=tuple(step.size), scale=tuple(step.scale), ratio=tuple(step.ratio),
                         mode="bicubic" if "BICUBIC" in str(step.interpolation).upper()
                         else "bilinear")
        elif name == "RandomHorizontalFlip":
            found["hflip"] = float(step.p)
        elif name == "RandomVerticalFlip":
            found["vflip"] = float(step.p)
        elif isinstance(step, RandomRotate):
            found.update(rotate=float(step.prob), degrees=(float(step.angle),) * 2)
        elif isinstance(step, RandomRotateDegrees):
            rot = step.transform.transforms[0]
            if "NEAREST" not in str(rot.interpolation).upper() or rot.expand or rot.center:
                raise UserError("data.batch_augment=true renders only nearest, centred, "
                                "non-expanding rotations; set data.batch_augment=false")
            found.update(rotate=float(step.transform.p), degrees=tuple(map(float, rot.degrees)))
        elif name == "RandomApply" and type(step.transforms[0]).__name__ == "ColorJitter":
            cj = step.transforms[0]
            found.update(jitter=float(step.p), brightness=_range(cj.brightness),
                         contrast=_range(cj.contrast), saturation=_range(cj.saturation),
                         hue=_range(cj.hue))
        elif name == "RandomGrayscale":
            found["gray"] = float(step.p)
        elif isinstance(step, GaussianBlur):
            found.update(blur=float(step.prob), sigmas=tuple(map(float, step.sigmas)))
        elif isinstance(step, RandomSolarization):
            found.update(solarize=float(step.prob), threshold=float(step.threshold) / 255)
        elif name == "Normalize":
            found.update(mean=tuple(map(float, step.mean)), std=tuple(map(float, step.std)))
        elif name not in ("ToTensor", "Compose", "ToImage", "ToDtype"):
            raise UserError(f"data.batch_augment=true cannot render the step {name}; "
                            "set data.batch_augment=false")
    if "size" not in found:
        raise UserError("data.batch_augment=true needs a RandomResizedCrop in every view")
    return ViewRecipe(**found)


def recipes_from(transform: Any) -> list[ViewRecipe]:
    """One :class:`ViewRecipe` per view of a lightly ``MultiViewTransform``."""
    return [recipe_from(v) for v in transform.transforms]


def draw_params(recipe: ViewRecipe, height: int, width: int) -> torch.Tensor:
    """Random parameters of one view of one ``height x width`` image: ``[P]`` float32.

    Uses torch's global generator (seeded per sample by ``SeededDataset``) and torchvision's
    own samplers, so the crops and jitter factors follow the plain transform's distribution.
    """
    p = dict.fromkeys(FIELDS, 0.0)  # python floats: one tensor at the end (cheap in a worker)
    p["top"], p["left"], p["height"], p["width"] = map(float, T.RandomResizedCrop.get_params(
        torch.empty(1, height, width), list(recipe.scale), list(recipe.ratio)))
    u = torch.rand(7).tolist()
    p["hflip"] = float(u[0] < recipe.hflip)
    p["vflip"] = float(u[1] < recipe.vflip)
    if u[6] < recipe.rotate:
        p["rotate"] = 1.0
        p["angle"] = float(T.RandomRotation.get_params(list(recipe.degrees)))
    if u[2] < recipe.jitter:
        order, b, c, s, hue = T.ColorJitter.get_params(
            *(list(r) if r else None for r in (recipe.brightness, recipe.contrast,
                                                recipe.saturation, recipe.hue)))
        p["jitter"] = 1.0
        p["o0"], p["o1"], p["o2"], p["o3"] = map(float, order.tolist())
        for key, val, neutral in (("brightness", b, 1.0), ("contrast", c, 1.0),
                                  ("saturation", s, 1.0), ("hue", hue, 0.0)):
            p[key] = neutral if val is None else float(val)
    p["gray"] = float(u[3] < recipe.gray)
    if u[4] < recipe.blur:
        p["blur"] = 1.0
        p["sigma"] = float(torch.empty(1).uniform_(*recipe.sigmas))
    p["solarize"] = float(u[5] < recipe.solarize)
    return torch.tensor([p[name] for name in FIELDS], dtype=torch.float32)


# ---- rendering: [B,3,H,W] float in [0,1] ------------------------------------------------------
def _gray(x: torch.Tensor) -> torch.Tensor:
    """``[N,3,H,W]`` -> luma ``[N,1,H,W]``."""
    w = x.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * other).clamp(0, 1)


#: HSV -> RGB: channel c is ``v * (1 - s * clamp(min(k, 4 - k), 0, 1))`` with
#: ``k = (HUE_OFFSETS[c] + 6 h) mod 6`` (the sector table of torchvision's ``_hsv2rgb`` in closed
#: form: same values, a few element-wise ops instead of a gather over six candidates).
HUE_OFFSETS = (5.0, 3.0, 1.0)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``x`` ``[N,3,H,W]`` by ``shift`` ``[N]`` turns (RGB -> HSV -> RGB)."""
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    delta = maxc - minc
    sat = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dc = delta.clamp_min(1e-12)
    # hue in sixths of a turn: (g-b)/d, 2 + (b-r)/d or 4 + (r-g)/d for max = r, g, b
    num = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r) + 2.0 * dc,
                                                    (r - g) + 4.0 * dc))
    h = torch.where(delta > 0, (num / (6.0 * dc)) % 1.0, torch.zeros_like(num))
    h6 = ((h + shift.view(-1, 1, 1)) % 1.0).mul_(6.0).unsqueeze(1)  # [N,1,H,W] in [0, 6)
    k = (h6 + h6.new_tensor(HUE_OFFSETS).view(1, 3, 1, 1)).remainder_(6.0)  # [N,3,H,W]
    f = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(1) * (1.0 - sat.unsqueeze(1) * f)).clamp_(0, 1)


def _jitter_op(k: int, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter op ``k`` (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    if k == 0:
        return (x * p[:, COL["brightness"]].view(-1, 1, 1, 1)).clamp(0, 1)
    if k == 1:
        return _blend(x, _gray(x).mean((2, 3), keepdim=True), p[:, COL["contrast"]])
    if k == 2:
        return _blend(x, _gray(x), p[:, COL["saturation"]])
    return _adjust_hue(x, p[:, COL["hue"]])


def _geometry(x: torch.Tensor, p: torch.Tensor, recipe: ViewRecipe) -> torch.Tensor:
    """Crop box -> resize to ``recipe.size`` -> flips -> rotation, as one ``grid_sample``.

    Each output pixel is mapped back through the rotation (counter-clockwise about the centre,
    as torchvision's ``rotate``; corners that come from outside the crop are black), the flips and
    the crop box into the source image, which is sampled once with the recipe's interpolation.
    """
    n, _, height, width = x.shape
    top, left = p[:, COL["top"]], p[:, COL["left"]]
    h, w = p[:, COL["height"]], p[:, COL["width"]]
    a = torch.deg2rad(p[:, COL["angle"]]) * (p[:, COL["rotate"]] > 0)
    cos, sin = torch.cos(a), torch.sin(a)
    rot = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    scale = torch.stack([torch.where(p[:, COL["hflip"]] > 0, -1.0, 1.0) * w / width,
                         torch.where(p[:, COL["vflip"]] > 0, -1.0, 1.0) * h / height], -1)
    shift = torch.stack([2 * (left + w / 2) / width - 1, 2 * (top + h / 2) / height - 1], -1)
    # output pixel -> rotated crop frame [-1, 1] -> flipped, scaled, shifted into the source:
    # one affine map per sample
    theta = torch.cat([rot[:, :, :2] * scale.view(n, 2, 1), shift.view(n, 2, 1)], 2)
    grid = F.affine_grid(theta, [n, 3, *recipe.size], align_corners=False)
    out = F.grid_sample(x, grid, mode=recipe.mode, padding_mode="border",
                        align_corners=False).clamp_(0, 1)
    rotated = (a != 0).nonzero().squeeze(1)
    if rotated.numel():  # corners that come from outside the rotated crop are black
        frame = F.affine_grid(rot[rotated], [len(rotated), 3, *recipe.size], align_corners=False)
        out[rotated] *= (frame.abs() <= 1).all(-1).unsqueeze(1)
    return out


def _gaussian_blur(x: torch.Tensor, p: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` ``[N,3,H,W]`` with sigma ``p[:, sigma]`` per sample."""
    n, c, height, width = x.shape
    radius = min(int(math.ceil(3 * max_sigma)), min(height, width) - 1)
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sigma = p[:, COL["sigma"]].clamp_min(1e-3).view(-1, 1)
    kern = torch.exp(-(k.view(1, -1) ** 2) / (2 * sigma ** 2))
    kern = kern / kern.sum(1, keepdim=True)
    kern = kern.repeat_interleave(c, 0)  # [n*c, K]
    y = x.reshape(1, n * c, height, width)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kern.view(n * c, 1, 1, -1),
                 groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kern.view(n * c, 1, -1, 1),
                 groups=n * c)
    return y.view(n, c, height, width)


def render(images: torch.Tensor, params: torch.Tensor, recipe: ViewRecipe) -> torch.Tensor:
    """``images`` ``[B,3,S,S]`` uint8 + ``params`` ``[B,P]`` -> normalised views ``[B,3,s,s]``."""
    x = images.float().div_(255)
    p = params.to(x.device, torch.float32)
    x = _geometry(x, p, recipe)
    jitter = p[:, COL["jitter"]] > 0
    if jitter.any():
        for pos in range(4):
            op_at = p[:, COL["o0"] + pos].long()
            for k in range(4):
                rows = (jitter & (op_at == k)).nonzero().squeeze(1)
                if rows.numel():
                    x[rows] = _jitter_op(k, x[rows], p[rows])
    gray = (p[:, COL["gray"]] > 0).nonzero().squeeze(1)
    if gray.numel():
        x[gray] = _gray(x[gray]).expand(-1, 3, -1, -1)
    blur = (p[:, COL["blur"]] > 0).nonzero().squeeze(1)
    if blur.numel():
        x[blur] = _gaussian_blur(x[blur], p[blur], recipe.sigmas[1])
    sol = (p[:, COL["solarize"]] > 0).nonzero().squeeze(1)
    if sol.numel():
        xs = x[sol]
        x[sol] = torch.where(xs >= recipe.threshold, 1.0 - xs, xs)
    mean = x.new_tensor(recipe.mean).view(1, 3, 1, 1)
    std = x.new_tensor(recipe.std).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def render_views(batch: dict[str, torch.Tensor], recipes: Sequence[ViewRecipe]
                 ) -> list[torch.Tensor]:
    """A collated :class:`BatchedViews` item -> views ``V x [B,3,s,s]`` (for ``ssl_step``)."""
    return [render(batch["image"], batch["params"][:, v], r) for v, r in enumerate(recipes)]


class BatchedViews(Dataset):
    """Pretraining items whose views are rendered later, batched.

    Item: ``({"image": [3,S,S] uint8, "params": [V,P] float32}, label, skipped)``, the same
    triple as :class:`~backbone_ssl.data.datasets.PretrainViews` with the views still to render.
    ``images`` is a :class:`~backbone_ssl.data.cache.CachedImages` (fixed-size uint8 pixels).
    """

    def __init__(self, images: Any, recipes: Sequence[ViewRecipe],
                 max_images: int | None = None) -> None:
        self.images, self.recipes = images, list(recipes)
        self.length = len(images) if max_images is None else min(len(images), max_images)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int, int]:
        i, img, skipped = self.images.decode_near(index)
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        _, height, width = pixels.shape
        params = torch.stack([draw_params(r, height, width) for r in self.recipes])
        return {"image": pixels, "params": params}, self.images.labels[i], skipped
