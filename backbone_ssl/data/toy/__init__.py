"""Procedurally drawn cartoon faces: the embedded default data set (``backbone-ssl toy faces``).

An identity is a :class:`FaceTraits` sampled once (head shape, skin, hair style and colour, eyes,
brows, nose, mouth, ears, glasses, facial hair, hat, freckles, blush). Every image of it redraws
those stable traits under per-image nuisance: pose (rotation, shift, scale, mirror), expression
(mouth, eyes, brows, gaze), line weight and ink colour, a random background (flat, gradient,
stripes, halftone dots, speed lines, clutter), a global colour cast / brightness / contrast jitter
and, in some images, a partial occlusion (a block, a speech balloon or a hand). A human recognises
the character from its traits; nearest neighbour on raw pixels does poorly
(:func:`raw_pixel_nn1`), which is the point: the demo shows what pretraining adds.

:func:`write_toy_faces` writes the real iCartoonFace recognition layout (see ``DESIGN.md``) plus a
``split/{train,val,test}/<identity>/`` view of the training identities. Drawing happens at
``SUPERSAMPLE`` x the output size and is downsampled with LANCZOS (anti-aliasing). All randomness
comes from ``numpy.random.Generator`` streams keyed by ``(seed, stream, identity, image)``, so the
same seed writes byte-identical files.

Modules: :mod:`.traits` (identities, per-image looks, palettes), :mod:`.parts` (drawing a face's
parts), :mod:`.backgrounds` (scenes, occluders, colour jitter), :mod:`.render` (one image),
:mod:`.writer` (the data set on disk), :mod:`.baseline` (raw-pixel 1-NN).
"""

from backbone_ssl.data.toy.baseline import raw_pixel_nn1
from backbone_ssl.data.toy.render import render_face
from backbone_ssl.data.toy.traits import FaceTraits, sample_traits
from backbone_ssl.data.toy.writer import SUMMARY_NAME, TOY_FACES_VERSION, write_toy_faces

__all__ = [
    "SUMMARY_NAME",
    "TOY_FACES_VERSION",
    "FaceTraits",
    "raw_pixel_nn1",
    "render_face",
    "sample_traits",
    "write_toy_faces",
]
