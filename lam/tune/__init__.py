"""Hyperparameter sweeps: Ray Tune + ASHA, one distributed TorchTrainer per trial."""
