"""Training: stages and freezing, optimizer, losses, the train step, checkpoints, the trainer loop."""
