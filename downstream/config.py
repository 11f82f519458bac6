"""Task configs for ``backbone-ssl downstream {cloze,siamese,gan,bigan,vaegan,introvae}``: dataclass
defaults <- ``configs/<task>.yaml`` <- ``key=value`` overrides (via
:func:`backbone_ssl.config.load_config`).

Sections: ``data``, ``model``, ``loss``, ``optim``, ``trainer``, ``metrics`` and ``seed``. The
``trainer`` section is a lean subset of the pretraining one (a fixed step budget, so every encoder
of a comparison trains the same number of steps).

Encoder input size: every task feeds the encoder images of a known side (``data.panel_size`` for
cloze, ``data.image_size`` for siamese and gan). An encoder trained at another size is refused
with one line, unless ``data.resize_to_encoder=true``, which resizes the task's images to the
encoder's input size (bilinear, antialiased) right before the encoder; the rest of the task keeps
its own size.

Why one module past 450 lines: it is the one home of every task's schema (the shared sections and
the face-GAN checks live beside the six task configs that use them); split per task, the shared
sections would be imported back from six places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from backbone_ssl.config import check_choice, check_positive
from backbone_ssl.errors import UserError
from backbone_ssl.nn.gan_losses import GAN_LOSSES

TASKS = ("cloze", "siamese", "gan", "bigan", "vaegan", "introvae", "stylegan", "invert")
SEQUENCE_MODES = ("concat", "lstm", "bilstm")
SPLITS = ("identity", "image")


@dataclass
class TaskTrainerConfig:
    """Passed to ``lightning.Trainer`` (Lightning's names); the budget is ``max_steps``."""

    max_steps: int = 300  # optimiser steps of the task model (the same for every encoder)
    max_epochs: int = -1  # -1: bounded by max_steps only
    max_minutes: Optional[float] = None  # wall-clock training budget (equal-minutes comparisons);
    #                                      training stops at max_steps or here, whichever first
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = 1  # the evaluation after training runs in one process
    precision: str = "32-true"  # or bf16-mixed on a GPU
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    deterministic: bool = False
    save_checkpoint: bool = True  # RUN/checkpoints/last.ckpt at the end


@dataclass
class TaskOptimConfig:
    """Adam for every trainable part (GANs: the DCGAN betas)."""

    lr: float = 2e-4
    beta1: Optional[float] = None  # null: by loss.gan, 0.5 (DCGAN) or 0.0 for wgan-gp
    beta2: Optional[float] = None  # null: by loss.gan, 0.999 (DCGAN) or 0.9 for wgan-gp
    weight_decay: float = 0.0
    encoder_lr: float = 1e-5  # only with model.finetune_encoder=true


@dataclass
class MetricsConfig:
    """KID and FD in the features of a fixed reference encoder (NOT Inception FID / KID)."""

    ref_encoder: str = "random:resnet18"  # name a trained encoder (e.g. an exported identity or
    #                                       DINO encoder); random:<arch> (seeded by ref_seed) is
    #                                       the last resort and reports flag it
    ref_seed: int = 0
    max_eval: int = 256  # at most this many samples for KID, FD and image metrics
    pca_dim: Optional[int] = 64  # FD in a PCA space fitted on real features; null: full space
    kid_subset_size: int = 50  # KID subset size (capped at the sample count)
    kid_subsets: int = 100
    grid_rows: int = 6  # rows of the sample grid


# ---- cloze ------------------------------------------------------------------------------------
@dataclass
class ClozeData:
    path: Optional[str] = None  # `golden prepare` output (sequences.json + prepare.json)
    batch_size: int = 16
    num_workers: int = 0
    panel_size: int = 64  # panels resized to this side (also the global discriminator's input)
    face_size: int = 64  # generated / target face side (DCGAN: 4 x a power of two)
    test_fraction: float = 0.2  # held-out books (split by book)
    mask_value: float = 0.0  # fill of the masked face area, in [-1, 1]
    resize_to_encoder: bool = False  # resize panels to the encoder's input size (else refuse)
    skip_missing_panels: bool = False  # drop sequences whose panel files are missing (else refuse)
    max_sequences: Optional[int] = None  # use only the first N training sequences


@dataclass
class ClozeModel:
    finetune_encoder: bool = False  # default: the per-panel embedder is frozen
    sequence: str = "lstm"  # concat | lstm | bilstm
    embed_dim: int = 256  # per-panel projection of the encoder features
    hidden_dim: int = 256  # sequence encoder output
    latent_dim: int = 128
    vae: bool = True  # mean + log-variance head with a KL term; false: deterministic latent
    gen_channels: int = 32  # DCGAN width (64 in the paper; 32 keeps CPU runs short)
    disc_channels: int = 32
    diffaugment: str = "color,translation,cutout"  # on every D input; none: off
    decoder: str = "dcgan"  # dcgan | stylegan (the sequence latent mapped into a StyleGAN's W)
    face_latent: str = "none"  # none | bigan | vae: predict a face model's latent of the true
    #                            face (model.face_model) and decode it with that model's G
    face_model: Optional[str] = None  # run folder: `downstream bigan` (face_latent=bigan),
    #                                   `vaegan`/`introvae` (vae) or `stylegan` (decoder=stylegan)
    finetune_face_generator: bool = False  # a face_model's generator trains too (else frozen)
    style_w_dim: int = 64  # decoder=stylegan without face_model: W size
    style_mapping_layers: int = 2  # decoder=stylegan without face_model: mapping depth
    style_channels: int = 32  # decoder=stylegan without face_model: synthesis width


@dataclass
class ClozeLoss:
    gan: str = "nonsaturating"  # nonsaturating | hinge | wgan-gp
    l1_weight: float = 10.0  # L1 between generated and true face
    local_weight: float = 1.0  # adversarial weight of the local (face) discriminator
    global_weight: float = 1.0  # adversarial weight of the global (panel) discriminator
    kl_weight: float = 0.001  # final KL weight (model.vae=true)
    kl_anneal_steps: int = 100  # KL weight ramps linearly from 0 over these steps
    gp_weight: float = 10.0  # wgan-gp only
    r1_weight: float = 0.0  # R1 penalty on real faces (gamma; 0: off)
    n_critic: Optional[int] = None  # critic updates per generator update; null: 5 for wgan-gp
    #                                 else 1 (each on fresh real and fake batches)
    latent_weight: float = 1.0  # model.face_latent: MSE of the predicted to the face model's latent


@dataclass
class ClozeConfig:
    task: str = "cloze"
    seed: int = 0
    data: ClozeData = field(default_factory=ClozeData)
    model: ClozeModel = field(default_factory=ClozeModel)
    loss: ClozeLoss = field(default_factory=ClozeLoss)
    optim: TaskOptimConfig = field(default_factory=TaskOptimConfig)
    trainer: TaskTrainerConfig = field(default_factory=TaskTrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        _check_common(self)
        check_choice(self.model.sequence, SEQUENCE_MODES, "model.sequence")
        check_choice(self.loss.gan, GAN_LOSSES, "loss.gan")
        _power_side(self.data.panel_size, "data.panel_size")
        _power_side(self.data.face_size, "data.face_size")
        if not 0.0 < self.data.test_fraction < 1.0:
            raise UserError(f"config key 'data.test_fraction' must be in (0, 1), got "
                            f"{self.data.test_fraction}")
        for key in ("embed_dim", "hidden_dim", "latent_dim"):
            check_positive(getattr(self.model, key), f"model.{key}")
        check_cloze_decoder(self.model)
        check_non_negative(self.loss, "loss", ("latent_weight",))
        resolve_gan_training(self)


DECODERS = ("dcgan", "stylegan")
FACE_LATENTS = ("none", "bigan", "vae")


def check_cloze_decoder(m: ClozeModel) -> None:
    """``model.decoder`` / ``model.face_latent`` / ``model.face_model`` go together: a face
    latent needs a face-model run and the DCGAN decoder; a face model needs one of the two."""
    check_choice(m.decoder, DECODERS, "model.decoder")
    check_choice(m.face_latent, FACE_LATENTS, "model.face_latent")
    if m.face_latent != "none" and not m.face_model:
        raise UserError(f"model.face_latent={m.face_latent} needs model.face_model=RUN (a "
                        f"`downstream {'bigan' if m.face_latent == 'bigan' else 'vaegan'}` run)")
    if m.face_latent != "none" and m.decoder != "dcgan":
        raise UserError(f"model.face_latent={m.face_latent} decodes with the face model's DCGAN "
                        "generator: it cannot go with model.decoder=stylegan")
    if m.face_model and m.face_latent == "none" and m.decoder == "dcgan":
        raise UserError("model.face_model is used with model.face_latent=bigan|vae or "
                        "model.decoder=stylegan; set one of them, or model.face_model=null")
    for key in ("style_w_dim", "style_mapping_layers", "style_channels"):
        check_positive(getattr(m, key), f"model.{key}")


# ---- siamese ----------------------------------------------------------------------------------
@dataclass
class SiameseData:
    path: Optional[str] = None  # identity folders ROOT/<identity>/<image>, or an iCartoonFace root
    batch_size: int = 64
    num_workers: int = 0
    image_size: int = 64  # images are resized to this side for the encoder
    resize_to_encoder: bool = False  # load at the encoder's input size instead (else refuse)
    split: str = "identity"  # identity: val/test identities unseen in training; image: same
    #                          identities, disjoint images
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    train_pairs: int = 4000  # pairs drawn (seeded) from the training split
    eval_pairs: int = 1000  # pairs drawn for validation and for test, each
    positive_fraction: float = 0.5
    max_images: Optional[int] = None  # only the first N images (quick experiments)


@dataclass
class SiameseModel:
    finetune_encoder: bool = False  # frozen: features are computed once and the head trains
    hidden_dim: int = 512
    embed_dim: int = 128  # identity embedding (L2-normalised)


@dataclass
class SiameseLoss:
    margin: float = 1.0  # contrastive margin on the L2 distance of normalised embeddings


@dataclass
class SiameseConfig:
    task: str = "siamese"
    seed: int = 0
    data: SiameseData = field(default_factory=SiameseData)
    model: SiameseModel = field(default_factory=SiameseModel)
    loss: SiameseLoss = field(default_factory=SiameseLoss)
    optim: TaskOptimConfig = field(default_factory=lambda: TaskOptimConfig(lr=1e-3, beta1=0.9,
                                                                           beta2=0.999))
    trainer: TaskTrainerConfig = field(default_factory=TaskTrainerConfig)

    def validate(self) -> None:
        _check_common(self)
        check_choice(self.data.split, SPLITS, "data.split")
        check_positive(self.data.image_size, "data.image_size")
        f = self.data.val_fraction + self.data.test_fraction
        if self.data.val_fraction <= 0 or self.data.test_fraction <= 0 or f >= 1:
            raise UserError("config keys 'data.val_fraction' and 'data.test_fraction' must be > 0 "
                            f"and sum to < 1, got {self.data.val_fraction} and "
                            f"{self.data.test_fraction}")
        if not 0.0 < self.data.positive_fraction < 1.0:
            raise UserError("config key 'data.positive_fraction' must be in (0, 1)")
        check_positive(self.loss.margin, "loss.margin")
        check_positive(self.data.train_pairs, "data.train_pairs")
        check_positive(self.data.eval_pairs, "data.eval_pairs")


# ---- gan --------------------------------------------------------------------------------------
@dataclass
class GanData:
    path: Optional[str] = None  # face crops: any image folder, or a `golden prepare` output
    batch_size: int = 32
    num_workers: int = 0
    image_size: int = 64  # face side (DCGAN: 4 x a power of two)
    resize_to_encoder: bool = False  # resize faces to the encoder's input size (else refuse)
    max_images: Optional[int] = None


@dataclass
class GanModel:
    latent_dim: int = 100
    gen_channels: int = 32  # DCGAN width (64 in the paper; 32 keeps CPU runs short)
    disc_channels: int = 32  # plain conv discriminator (encoder_in_discriminator=false)
    encoder_in_discriminator: bool = True  # D = small trainable head on the frozen encoder's
    #                                        features; false: a plain DCGAN discriminator
    head_hidden: int = 256
    projected: bool = True  # encoder in D: multi-scale stage features, one small head each
    #                         (Projected GAN); false: one head on the pooled features
    projected_stages: int = 3  # the encoder's last N stages
    projected_normalise: bool = False  # standardise each stage per channel (stats of real faces)
    projected_mixing: bool = False  # a fixed random 1x1 conv per stage (Projected GAN's CCM)
    pixel_critic: bool = True  # encoder in D: also the plain conv critic, each with its own loss
    projected_blur: float = 0.0  # Gaussian sigma (px) on the encoder's input; 0: off
    projected_mbstd: bool = True  # minibatch std (ProGAN) in each projected head
    projected_sn: bool = True  # spectral norm on every projected head conv (Projected GAN's D)
    projected_global: bool = True  # each head's last conv covers its whole map: one logit
    diffaugment: str = "color,translation,cutout"  # on every D input (Zhao et al.); none: off


@dataclass
class GanLoss:
    gan: str = "nonsaturating"  # nonsaturating | hinge | wgan-gp
    gp_weight: float = 10.0
    r1_weight: float = 0.0  # R1 penalty on real faces (gamma; 0: off)
    n_critic: Optional[int] = None  # null: 5 for wgan-gp, else 1 (fresh batches each)


@dataclass
class GanConfig:
    """``downstream gan``; also the base of the other face-model tasks (bigan, vaegan,
    introvae), which share its ``seed``, ``data``, ``optim``, ``trainer`` and ``metrics``
    sections and replace ``task``, ``model`` and ``loss`` (same key order)."""

    task: str = "gan"
    seed: int = 0
    data: GanData = field(default_factory=GanData)
    model: GanModel = field(default_factory=GanModel)
    loss: GanLoss = field(default_factory=GanLoss)
    optim: TaskOptimConfig = field(default_factory=TaskOptimConfig)
    trainer: TaskTrainerConfig = field(default_factory=TaskTrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        _check_face_gan(self, ("latent_dim", "projected_stages"))
        check_non_negative(self.model, "model", ("projected_blur",))
        resolve_gan_training(self)


# ---- bigan ------------------------------------------------------------------------------------
@dataclass
class BiganModel:
    latent_dim: int = 100
    gen_channels: int = 32  # DCGAN generator width
    disc_channels: int = 32  # D's image branch (conv, no normalisation)
    joint_hidden: int = 256  # D's z branch and joint (x, z) MLP width
    finetune_encoder: bool = True  # E's backbone trains (at optim.encoder_lr); false: head only
    diffaugment: str = "color,translation,cutout"  # on D's image input (real and fake); none: off


@dataclass
class BiganConfig(GanConfig):
    task: str = "bigan"
    model: BiganModel = field(default_factory=BiganModel)

    def validate(self) -> None:
        _check_face_gan(self, ("latent_dim", "gen_channels", "disc_channels", "joint_hidden"))
        resolve_gan_training(self)


# ---- vaegan -----------------------------------------------------------------------------------
@dataclass
class VaeganModel:
    latent_dim: int = 100
    gen_channels: int = 32  # DCGAN decoder (generator) width
    disc_channels: int = 32  # conv discriminator width; its last conv block is Dis_l
    finetune_encoder: bool = True  # E's backbone trains (at optim.encoder_lr); false: head only
    diffaugment: str = "color,translation,cutout"  # on D's adversarial inputs; none: off


@dataclass
class VaeganLoss:
    gan: str = "nonsaturating"  # nonsaturating | hinge | wgan-gp
    kl_weight: float = 1.0  # weight of KL(q(z|x) || N(0, I)) in the encoder loss
    rec_weight: float = 1.0  # weight of the Dis_l feature reconstruction loss (encoder)
    gamma: float = 1.0  # decoder: gamma x feature reconstruction + adversarial (Larsen's gamma)
    adv_weight: float = 1.0  # weight of the decoder's adversarial term
    gp_weight: float = 10.0  # wgan-gp only
    r1_weight: float = 0.0  # R1 penalty on real faces (gamma of Mescheder et al.; 0: off)
    n_critic: Optional[int] = None  # null: 5 for wgan-gp, else 1 (fresh batches each)


@dataclass
class VaeganConfig(GanConfig):
    task: str = "vaegan"
    model: VaeganModel = field(default_factory=VaeganModel)
    loss: VaeganLoss = field(default_factory=VaeganLoss)

    def validate(self) -> None:
        _check_face_gan(self, ("latent_dim", "gen_channels", "disc_channels"))
        check_non_negative(self.loss, "loss", ("kl_weight", "rec_weight", "gamma", "adv_weight"))
        resolve_gan_training(self)


# ---- introvae ---------------------------------------------------------------------------------
@dataclass
class IntrovaeModel:
    latent_dim: int = 100
    gen_channels: int = 32  # DCGAN decoder (generator) width
    finetune_encoder: bool = True  # E's backbone trains (at optim.encoder_lr); false: head only


@dataclass
class IntrovaeLoss:
    alpha: float = 0.25  # weight of the adversarial KL terms (paper's alpha)
    beta: float = 0.5  # weight of the reconstruction loss L_AE (paper's beta)
    margin: float = 100.0  # m: E pushes the KL of generated faces up to this (per sample, summed
    #                        over latent dims); scale it with model.latent_dim
    vae_warmup_steps: int = 0  # batches trained as a plain VAE before the introspective terms


@dataclass
class IntrovaeConfig(GanConfig):
    task: str = "introvae"
    model: IntrovaeModel = field(default_factory=IntrovaeModel)
    loss: IntrovaeLoss = field(default_factory=IntrovaeLoss)
    optim: TaskOptimConfig = field(default_factory=lambda: TaskOptimConfig(beta1=0.9,
                                                                           beta2=0.999))

    def validate(self) -> None:
        _check_common(self)
        _power_side(self.data.image_size, "data.image_size")
        for key in ("latent_dim", "gen_channels"):
            check_positive(getattr(self.model, key), f"model.{key}")
        check_non_negative(self.loss, "loss", ("alpha", "beta", "margin", "vae_warmup_steps"))
        if not (0.0 <= self.optim.beta1 < 1.0 and 0.0 <= self.optim.beta2 < 1.0):
            raise UserError("config keys 'optim.beta1/beta2' must be in [0, 1)")


CONFIGS: dict[str, type] = {"cloze": ClozeConfig, "siamese": SiameseConfig, "gan": GanConfig,
                            "bigan": BiganConfig, "vaegan": VaeganConfig,
                            "introvae": IntrovaeConfig}


#: (beta1, beta2, n_critic) by loss: DCGAN's Adam(0.5, 0.999) and one critic step; WGAN-GP's
#: Adam(0, 0.9) and five critic steps (Gulrajani et al., 2017, Algorithm 1).
GAN_TRAINING_DEFAULTS = {"nonsaturating": (0.5, 0.999, 1), "hinge": (0.5, 0.999, 1),
                         "wgan-gp": (0.0, 0.9, 5)}


def resolve_gan_training(cfg: Any) -> None:
    """Fill ``optim.beta1/beta2`` and ``loss.n_critic`` left null with the defaults of
    ``loss.gan``, then validate: WGAN-GP with a single critic step or Adam momentum above 0.5
    is refused (the critic must be near-optimal and momentum destabilises it), and the
    DiffAugment policy must name known ops."""
    from backbone_ssl.nn.diffaugment import check_policy

    b1, b2, nc = GAN_TRAINING_DEFAULTS[cfg.loss.gan]
    o, lo = cfg.optim, cfg.loss
    o.beta1 = b1 if o.beta1 is None else o.beta1
    o.beta2 = b2 if o.beta2 is None else o.beta2
    lo.n_critic = nc if lo.n_critic is None else lo.n_critic
    check_positive(lo.n_critic, "loss.n_critic")
    if not (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0):
        raise UserError(f"config keys 'optim.beta1/beta2' must be in [0, 1), got {o.beta1}, "
                        f"{o.beta2}")
    if lo.gan == "wgan-gp" and (lo.n_critic < 2 or o.beta1 > 0.5):
        raise UserError(f"loss.gan=wgan-gp needs loss.n_critic >= 2 and optim.beta1 <= 0.5 "
                        f"(defaults 5 and 0.0; got {lo.n_critic} and {o.beta1}): leave them "
                        "null for the WGAN-GP defaults")
    if lo.r1_weight < 0:
        raise UserError(f"config key 'loss.r1_weight' must be >= 0, got {lo.r1_weight}")
    try:
        check_policy(cfg.model.diffaugment)
    except ValueError as e:
        raise UserError(f"config key 'model.diffaugment': {e}") from None


def check_non_negative(section: Any, name: str, keys: Sequence[str]) -> None:
    """Each ``section.<key>`` must be >= 0 (a UserError naming ``name.key`` otherwise)."""
    for key in keys:
        value = getattr(section, key)
        if value < 0:
            raise UserError(f"config key '{name}.{key}' must be >= 0, got {value}")


def _check_face_gan(cfg: Any, model_keys: Sequence[str]) -> None:
    """The checks every face GAN config (gan, bigan, vaegan) starts with: the common ones, a known
    ``loss.gan``, ``data.image_size`` 4 x a power of two, and each ``model.<key>`` > 0."""
    _check_common(cfg)
    check_choice(cfg.loss.gan, GAN_LOSSES, "loss.gan")
    _power_side(cfg.data.image_size, "data.image_size")
    for key in model_keys:
        check_positive(getattr(cfg.model, key), f"model.{key}")


def _power_side(size: int, key: str) -> None:
    side = size // 4
    if size < 8 or size % 4 or side & (side - 1):
        raise UserError(f"config key '{key}' must be 4 x a power of two (8, 16, 32, 64, 128, "
                        f"...), got {size}")


def _check_common(cfg: Any) -> None:
    if cfg.data.batch_size < 2:
        raise UserError(f"config key 'data.batch_size' must be >= 2, got {cfg.data.batch_size}")
    check_positive(cfg.trainer.max_steps, "trainer.max_steps")
    minutes = getattr(cfg.trainer, "max_minutes", None)
    if minutes is not None and not minutes > 0:
        raise UserError(f"config key 'trainer.max_minutes' must be > 0 or null, got {minutes}")
    check_positive(cfg.optim.lr, "optim.lr")
    metrics = getattr(cfg, "metrics", None)
    for key in ("max_eval", "kid_subset_size", "kid_subsets", "pca_dim"):
        value = getattr(metrics, key, None)  # each task's metrics section has its own keys
        if value is not None:
            check_positive(value, f"metrics.{key}")


import downstream.stylegan_config  # noqa: E402,F401  (registers stylegan and invert in CONFIGS)
