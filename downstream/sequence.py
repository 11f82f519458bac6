"""CNN-LSTM panel-sequence encoder (SSuperGAN's ``seq_encoder``): one CNN embedding per panel, a
sequence model over the panels, and a latent head.

``panels [B,P,3,S,S]`` -> per-panel features ``[B,P,D]`` (the exported encoder, frozen unless
fine-tuned; a frozen one runs without autograd, as nothing upstream of it needs gradients) ->
projection ``[B,P,E]`` -> sequence summary ``[B,H]`` -> ``mu [B,Z]`` (and ``logvar [B,Z]`` with
the VAE head). Sequence models (``mode``):

- ``concat``: the P projections concatenated, then a linear layer (order-aware, no recurrence);
- ``lstm``: an LSTM over the panels in reading order; the last hidden state (which has seen the
  masked panel last);
- ``bilstm``: a bidirectional LSTM (H/2 per direction); the last hidden state of each direction.

VAE head: Kingma & Welling, "Auto-Encoding Variational Bayes", 2014.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PanelSequenceEncoder(nn.Module):
    """``panels [B,P,3,S,S]`` -> ``(mu [B,Z], logvar [B,Z] or None)``."""

    def __init__(self, embedder: nn.Module, feature_dim: int, n_panels: int, mode: str = "lstm",
                 embed_dim: int = 256, hidden_dim: int = 256, latent_dim: int = 128,
                 vae: bool = True) -> None:
        super().__init__()
        if mode not in ("concat", "lstm", "bilstm"):
            raise ValueError(f"unknown sequence mode '{mode}'")
        if mode == "bilstm" and hidden_dim % 2:
            raise ValueError("bilstm needs an even hidden_dim")
        self.embedder, self.mode, self.n_panels = embedder, mode, n_panels
        self.project = nn.Sequential(nn.Linear(feature_dim, embed_dim), nn.LayerNorm(embed_dim),
                                     nn.ReLU(True))
        if mode == "concat":
            self.sequence = nn.Sequential(nn.Linear(n_panels * embed_dim, hidden_dim),
                                          nn.ReLU(True))
        else:
            bi = mode == "bilstm"
            self.sequence = nn.LSTM(embed_dim, hidden_dim // 2 if bi else hidden_dim,
                                    batch_first=True, bidirectional=bi)
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim) if vae else None

    def summarise(self, panels: torch.Tensor) -> torch.Tensor:
        """``[B,P,3,S,S]`` -> ``[B,H]``."""
        b, p = panels.shape[:2]
        if p != self.n_panels:
            raise ValueError(f"expected {self.n_panels} panels per sequence, got {p}")
        frozen = not any(q.requires_grad for q in self.embedder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            feats = self.embedder(panels.flatten(0, 1)).view(b, p, -1)  # [B,P,D]
        emb = self.project(feats)  # [B,P,E]
        if self.mode == "concat":
            return self.sequence(emb.flatten(1))
        _, (h_n, _) = self.sequence(emb)  # h_n: [directions, B, H/dirs]
        return h_n.permute(1, 0, 2).reshape(b, -1)

    def forward(self, panels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.summarise(panels)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor | None) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps`` (``mu`` itself without a VAE head)."""
    if logvar is None:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``[B]``: ``KL(N(mu, exp(logvar)) || N(0, I))`` of each sample, summed over latent dims."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dims, averaged over the batch."""
    return kl_per_sample(mu, logvar).mean()
