"""lam: train, evaluate and export VQ-VAE latent action models on VVAE latents, on Ray."""

__version__ = "0.1.0"
