"""What training, evaluation and sweeps share: Ray start-up and the console, storage paths,
checkpoints (and checkpoint -> model), run logging (metrics.jsonl and wandb)."""
