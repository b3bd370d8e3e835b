"""lam: train, evaluate and export latent action models on VVAE latents, on Ray."""

__version__ = "0.1.0"
