"""Training: parameter groups and stages, losses, the train/eval step, the trainer loop."""
