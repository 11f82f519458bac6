"""GAN building blocks shared by pretraining (``methods/inpaint.py``) and ``downstream``.

- :mod:`~backbone_ssl.nn.gan_losses`: non-saturating, hinge and WGAN losses, WGAN-GP penalty, R1;
- :mod:`~backbone_ssl.nn.critics`: conv critics, box crops for local critics, multi-scale
  projected critics (Projected GAN);
- :mod:`~backbone_ssl.nn.diffaugment`: DiffAugment on every discriminator input;
- :mod:`~backbone_ssl.nn.training`: ``requires_grad`` toggling, critic and generator steps.
"""

from backbone_ssl.nn.critics import (
    ConvDiscriminator,
    MinibatchStd,
    ProjectedDiscriminator,
    crop_boxes,
)
from backbone_ssl.nn.diffaugment import AugmentedCritic, diff_augment
from backbone_ssl.nn.gan_losses import (
    GAN_LOSSES,
    check_gan_loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from backbone_ssl.nn.training import (
    critic_loss,
    generator_step,
    set_requires_grad,
    train_critic,
)

__all__ = ["GAN_LOSSES", "AugmentedCritic", "ConvDiscriminator", "MinibatchStd",
           "ProjectedDiscriminator", "check_gan_loss", "critic_loss", "crop_boxes",
           "diff_augment", "discriminator_loss", "generator_loss", "generator_step",
           "gradient_penalty", "r1_penalty", "set_requires_grad", "train_critic"]
