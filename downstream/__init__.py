"""downstream: models that consume exported encoders (face cloze, Siamese identity, GAN)."""
