"""The fast data path (``data.cache``, ``trainer.channels_last``) draws the same views as the
plain one: same shapes, dtypes, value ranges, the same pixels under the same seed, and per-sample
augmentation randomness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw_identity_folder
from PIL import Image

from backbone_ssl.config import load_config
from backbone_ssl.data.cache import (
    CACHE_ENV,
    CachedImages,
    build_decode_cache,
    cached_size,
    index_file,
)
from backbone_ssl.data.datasets import ImageFolderDataset
from backbone_ssl.data.sampling import ResumableLoader, SeededDataset, SeededIndex
from backbone_ssl.io import open_rgb
from backbone_ssl.methods import get_method

SIZE = 32


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return draw_identity_folder(tmp_path / "imgs", identities=3, per_identity=4, size=SIZE)


def method_dataset(name: str, root: Path, cache: bool, **extra: str) -> SeededDataset:
    """``model.train_dataset()`` of method ``name`` over ``root``, wrapped as the loader does."""
    overrides = [f"data.cache={str(cache).lower()}", f"data.image_size={SIZE}",
                 "model.arch=resnet10t", *[f"{k}={v}" for k, v in extra.items()]]
    cls = get_method(name)
    cfg = load_config(cls.config_cls, name, overrides=overrides, data__path=str(root))
    return SeededDataset(cls(cfg).train_dataset())


def test_cache_holds_the_decoded_pixels_and_is_reused(folder):
    images = ImageFolderDataset(folder)
    cached = CachedImages(images, SIZE)
    assert cached.pixels.shape == (len(images) * SIZE * SIZE * 3,)
    assert cached.pixels.dtype == np.uint8 and cached.ok.all()
    assert (cached.index[:, 1:] == SIZE).all()
    for i in (0, 5, len(images) - 1):
        decoded = np.asarray(open_rgb(images.paths[i]))
        np.testing.assert_array_equal(np.asarray(cached.load(i)), decoded)
    assert cached.labels == images.labels
    stamp = cached.array_file.stat().st_mtime_ns
    again, _ = build_decode_cache(images.paths, images.root, SIZE)
    assert again == cached.array_file and again.stat().st_mtime_ns == stamp  # not rebuilt
    # another working size or a changed file -> another cache file
    other, _ = build_decode_cache(images.paths, images.root, 16)
    assert other != cached.array_file and (np.load(index_file(other))[:, 1:] == 16).all()
    open_rgb(images.paths[0]).rotate(90).save(images.paths[0])
    changed, _ = build_decode_cache(images.paths, images.root, SIZE)
    assert changed != cached.array_file


def test_cache_skips_broken_files_like_the_plain_dataset(folder):
    broken = sorted((folder / "id_1").iterdir())[0]
    broken.write_bytes(b"not an image")
    plain = ImageFolderDataset(folder)
    cached = CachedImages(ImageFolderDataset(folder), SIZE)
    i = plain.paths.index(broken)
    assert not cached.ok[i] and cached.ok.sum() == len(plain) - 1
    used_p, img_p, skipped_p = plain.decode_near(i)
    used_c, img_c, skipped_c = cached.decode_near(i)
    assert (used_c, skipped_c) == (used_p, skipped_p) == (i + 1, 1)
    np.testing.assert_array_equal(np.asarray(img_c), np.asarray(img_p))
    assert cached.skipped[str(broken)] == 1


@pytest.mark.parametrize("name,extra", [
    ("dino", {"dino.local_crop_size": "16", "dino.n_local_views": "2"}),
    ("byol", {}),
])
def test_cached_views_have_the_plain_distribution(folder, name, extra):
    plain = method_dataset(name, folder, cache=False, **extra)
    fast = method_dataset(name, folder, cache=True, **extra)
    n_views = 4 if name == "dino" else 2
    for index in range(len(plain)):
        seeded = SeededIndex(index, 1000 + index)
        views_p, label_p, skipped_p = plain[seeded]
        views_f, label_f, skipped_f = fast[seeded]
        assert (label_f, skipped_f) == (label_p, skipped_p)
        assert len(views_f) == len(views_p) == n_views
        for vp, vf in zip(views_p, views_f):
            assert vf.shape == vp.shape and vf.dtype == vp.dtype == torch.float32
            # same pixels, same seed -> the very same augmented view
            torch.testing.assert_close(vf, vp, rtol=0, atol=1e-6)
    # value range: normalised [0,1] pixels with ImageNet mean/std
    lo, hi = (0 - 0.485) / 0.229, (1 - 0.406) / 0.225
    views = torch.cat([v.flatten() for v in fast[SeededIndex(0, 7)][0]])
    assert lo - 1e-4 <= float(views.min()) and float(views.max()) <= hi + 1e-4
    assert float(views.std()) > 0.1  # not a constant image


def write_non_square(root: Path) -> dict[str, tuple[int, int]]:
    """Panels and crops of several shapes (``(w, h)``), like iCartoonFace crops and COMICS
    panels: two within the working size (stored as they are), two above it (resized)."""
    rng = np.random.default_rng(3)
    shapes = {"panel_wide": (48, 24), "crop_tall": (20, 40), "panel_big": (120, 60),
              "crop_big": (50, 90)}
    for k, (name, (w, h)) in enumerate(shapes.items()):
        d = root / f"id_{k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2, : w // 3] = (220, 40, 40)  # a block the crops must keep in place
        Image.fromarray(pixels).save(d / f"{name}.png")
    return shapes


def test_cache_keeps_the_aspect_ratio_of_non_square_images(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    shapes = write_non_square(tmp_path / "imgs")
    images = ImageFolderDataset(tmp_path / "imgs")
    cached = CachedImages(images, SIZE)
    for i, path in enumerate(images.paths):
        w, h = shapes[path.stem]
        im = cached.load(i)
        original = open_rgb(path)
        if min(w, h) <= SIZE:  # within the working size: the file's own pixels
            assert im.size == (w, h)
            np.testing.assert_array_equal(np.asarray(im), np.asarray(original))
        else:  # shorter side resized to SIZE, the same aspect ratio
            assert min(im.size) == SIZE and im.size == cached_size(w, h, SIZE)
            assert abs(im.width / im.height - w / h) < 0.05
            np.testing.assert_array_equal(
                np.asarray(im), np.asarray(original.resize(im.size, Image.BICUBIC)))
    # square=True (data.batch_augment's batched rendering) squashes, as before
    square = CachedImages(images, SIZE, square=True)
    assert {square.load(i).size for i in range(len(images))} == {(SIZE, SIZE)}
    assert square.array_file != cached.array_file


def test_cached_views_of_non_square_images_are_the_plain_views(tmp_path, monkeypatch):
    """RandomResizedCrop draws its box from the image's own width and height: with the aspect
    ratio kept, the cached path gives the very views of the plain path (same seed)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    shapes = write_non_square(tmp_path / "imgs")
    plain = method_dataset("byol", tmp_path / "imgs", cache=False)
    fast = method_dataset("byol", tmp_path / "imgs", cache=True)
    paths = ImageFolderDataset(tmp_path / "imgs").paths
    for index, path in enumerate(paths):
        w, h = shapes[path.stem]
        if min(w, h) > SIZE:
            continue  # resized once in the cache: close, not identical
        views_p, _, _ = plain[SeededIndex(index, 50 + index)]
        views_f, _, _ = fast[SeededIndex(index, 50 + index)]
        for vp, vf in zip(views_p, views_f):
            torch.testing.assert_close(vf, vp, rtol=0, atol=1e-6)


def test_augmentations_stay_random_per_sample(folder):
    fast = method_dataset("byol", folder, cache=True)
    # one image under several seeds: every draw differs; the same seed repeats exactly
    draws = [fast[SeededIndex(0, s)][0][0] for s in range(6)]
    for a in range(len(draws)):
        for b in range(a + 1, len(draws)):
            assert not torch.equal(draws[a], draws[b])
    torch.testing.assert_close(fast[SeededIndex(0, 3)][0][0], draws[3], rtol=0, atol=0)
    # a loader batch: the two views of every sample differ and samples differ from each other
    loader = ResumableLoader(fast.dataset, batch_size=6, seed=0, drop_last=True)
    (v0, v1), _, _ = next(iter(loader))
    assert v0.shape == (6, 3, SIZE, SIZE)
    per_sample = (v0 - v1).flatten(1).abs().amax(dim=1)
    assert (per_sample > 0).all()
    assert len({tuple(v0[i, :, 0, 0].tolist()) for i in range(6)}) == 6


def test_channels_last_converts_image_batches_only(folder):
    cls = get_method("byol")
    cfg = load_config(cls.config_cls, "byol", data__path=str(folder),
                      overrides=["trainer.channels_last=true", "model.arch=resnet10t"])
    model = cls(cfg)
    batch = ([torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)], torch.tensor([0, 1]),
             torch.zeros(2))
    (v0, v1), labels, skipped = model.on_after_batch_transfer(batch, 0)
    assert v0.is_contiguous(memory_format=torch.channels_last)
    assert not v0.is_contiguous()  # really NHWC strides (C=3 > 1)
    torch.testing.assert_close(v0, batch[0][0], rtol=0, atol=0)
    assert torch.equal(labels, batch[1]) and skipped.dim() == 1
    model.on_fit_start()
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    model.on_fit_end()
    assert all(p.is_contiguous() for p in model.parameters())


def test_pretrain_with_cache_and_channels_last(folder, tmp_path):
    from backbone_ssl.export import load_encoder_bundle
    from backbone_ssl.train import pretrain

    res = pretrain("dino", data=str(folder), out=str(tmp_path / "run"), overrides=[
        "data.cache=true", "trainer.channels_last=true", "trainer.max_steps=2",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        f"data.image_size={SIZE}", "data.batch_size=4", "dino.local_crop_size=16"])
    assert res.steps == 2
    assert list((tmp_path / "cache").glob("*.npy"))  # the cache was used
    enc = load_encoder_bundle(res.encoder_dir)
    out = enc.module(torch.rand(2, 3, SIZE, SIZE))
    assert out.shape == (2, enc.module.num_features) and torch.isfinite(out).all()


# ---- batched tensor augmentations (data.batch_augment) ------------------------------------------
def _recipe(**kw):
    from backbone_ssl.data.batch_views import ViewRecipe

    base = dict(size=(SIZE, SIZE), scale=(1.0, 1.0), ratio=(1.0, 1.0), mode="bilinear",
                hflip=0.0, vflip=0.0, rotate=0.0, degrees=(0.0, 0.0), jitter=0.0,
                brightness=None, contrast=None, saturation=None, hue=None, gray=0.0, blur=0.0,
                sigmas=(0.1, 2.0), solarize=0.0, threshold=128 / 255, mean=(0.0, 0.0, 0.0),
                std=(1.0, 1.0, 1.0))
    return ViewRecipe(**{**base, **kw})


def _params(n, **values):
    from backbone_ssl.data.batch_views import COL, FIELDS

    p = torch.zeros(n, len(FIELDS))
    p[:, COL["height"]] = p[:, COL["width"]] = SIZE
    for key, v in values.items():
        p[:, COL[key]] = torch.as_tensor(v, dtype=torch.float32)
    return p


def test_batched_ops_match_torchvision_kernels():
    import torchvision.transforms.v2.functional as TF

    from backbone_ssl.data.batch_views import render

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    x = images.float() / 255
    # full-image crop, nothing else: the image itself
    torch.testing.assert_close(render(images, _params(4), _recipe()), x, rtol=0, atol=1e-5)
    # flip + rotation (black corners) as torchvision draws them; nearest sampling so that the
    # one composed resampling equals torchvision's nearest rotation of the flipped image
    out = render(images, _params(4, hflip=1, rotate=1, angle=[-20, 5, 13, 20]),
                 _recipe(mode="nearest"))
    for i, angle in enumerate([-20, 5, 13, 20]):
        ref = TF.rotate(TF.horizontal_flip(x[i]), angle, TF.InterpolationMode.NEAREST)
        assert (out[i] - ref).abs().gt(1e-4).float().mean() < 0.02  # a few border pixels
    # colour jitter ops one at a time (order [k, ...] puts op k first)
    cases = {0: ("brightness", 1.3, TF.adjust_brightness), 1: ("contrast", 0.7, TF.adjust_contrast),
             2: ("saturation", 1.2, TF.adjust_saturation), 3: ("hue", 0.08, TF.adjust_hue)}
    for k, (key, f, fn) in cases.items():
        neutral = dict(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
        order = [k] + [j for j in range(4) if j != k]
        p = _params(4, jitter=1, o0=order[0], o1=order[1], o2=order[2], o3=order[3],
                    **{**neutral, key: f})
        torch.testing.assert_close(render(images, p, _recipe()), fn(x, f), rtol=0, atol=2e-3)
    # grayscale, solarisation
    gray = render(images, _params(4, gray=1), _recipe())
    # PIL (the plain path) weighs R by 0.299, torchvision by 0.2989
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(x, 3), rtol=0, atol=2e-4)
    sol = render(images, _params(4, solarize=1), _recipe())
    torch.testing.assert_close(sol, torch.where(x >= 128 / 255, 1 - x, x), rtol=0, atol=1e-6)
    # blur keeps the mean and lowers the variation, more for a larger sigma
    weak = render(images, _params(4, blur=1, sigma=0.3), _recipe())
    strong = render(images, _params(4, blur=1, sigma=2.0), _recipe())
    assert torch.allclose(strong.mean((2, 3)), x.mean((2, 3)), atol=0.02)
    assert float(strong.std()) < float(weak.std()) < float(x.std())


@pytest.mark.parametrize("name,extra", [
    ("dino", {"dino.local_crop_size": "16", "dino.n_local_views": "2"}),
    ("byol", {}),
])
def test_batched_views_have_the_plain_distribution(folder, name, extra):
    """Shapes, dtypes, value ranges and per-view statistics of the batched path match lightly's."""
    plain = method_dataset(name, folder, cache=False, **extra)
    fast_ds = method_dataset(name, folder, cache=True, **{"data.batch_augment": "true", **extra})
    model_cfg = [f"{k}={v}" for k, v in extra.items()]
    cls = get_method(name)
    cfg = load_config(cls.config_cls, name, data__path=str(folder), overrides=[
        "data.batch_augment=true", f"data.image_size={SIZE}", "model.arch=resnet10t", *model_cfg])
    model = cls(cfg)
    model.train_dataset()  # sets the recipes the module renders with
    seeds = [SeededIndex(i, 17 * s + i) for s in range(25) for i in range(len(plain))]
    ref = [torch.stack(v) for v in zip(*[plain[s][0] for s in seeds])]
    items = [fast_ds[s] for s in seeds]
    batch = {"image": torch.stack([it[0]["image"] for it in items]),
             "params": torch.stack([it[0]["params"] for it in items])}
    views = model.on_after_batch_transfer([batch, None, None], 0)[0]
    assert len(views) == len(ref)
    lo, hi = (0 - 0.485) / 0.229 - 1e-4, (1 - 0.406) / 0.225 + 1e-4
    for v, r in zip(views, ref):
        assert v.shape == r.shape and v.dtype == r.dtype == torch.float32
        assert lo <= float(v.min()) and float(v.max()) <= hi
        assert torch.allclose(v.mean((0, 2, 3)), r.mean((0, 2, 3)), atol=0.25)
        ratio = v.std((0, 2, 3)) / r.std((0, 2, 3))
        assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio
    # per-sample randomness: the same image under two seeds gives two different views;
    # the same seed gives the same parameters (exact resume)
    a, b = fast_ds[SeededIndex(0, 1)][0]["params"], fast_ds[SeededIndex(0, 2)][0]["params"]
    assert not torch.equal(a, b)
    torch.testing.assert_close(fast_ds[SeededIndex(0, 1)][0]["params"], a, rtol=0, atol=0)
    first = views[0].flatten(1)
    assert torch.unique(first, dim=0).shape[0] == len(first)  # no two views alike


def test_pretrain_with_batched_views(folder, tmp_path, monkeypatch):
    """The loss of a ``data.batch_augment`` run sees two normalised float views per image,
    rendered from each sample's own parameters (two different views of every image)."""
    from backbone_ssl.methods.byol import BYOL
    from backbone_ssl.train import pretrain

    seen: list[list[torch.Tensor]] = []
    real_step = BYOL.ssl_step

    def spy(self, views):
        seen.append([v.detach().clone() for v in views])
        return real_step(self, views)

    monkeypatch.setattr(BYOL, "ssl_step", spy)
    res = pretrain("byol", data=str(folder), out=str(tmp_path / "run"), overrides=[
        "data.batch_augment=true", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
        "data.num_workers=0", "model.arch=resnet10t", f"data.image_size={SIZE}",
        "data.batch_size=4"])
    assert res.steps == 2 and (res.encoder_dir / "model.safetensors").is_file()
    assert len(seen) == 2
    lo, hi = (0 - 0.485) / 0.229 - 1e-4, (1 - 0.406) / 0.225 + 1e-4
    for views in seen:
        assert len(views) == 2
        for v in views:
            assert v.shape == (4, 3, SIZE, SIZE) and v.dtype == torch.float32
            assert lo <= float(v.min()) and float(v.max()) <= hi and float(v.std()) > 0.1
        # the two views of each image differ (each drew its own crop / flip / jitter)
        assert (views[0] - views[1]).abs().flatten(1).amax(1).min() > 0.05
    assert not torch.equal(seen[0][0], seen[1][0])  # the second step saw other views
