"""Fine-tuning the fetched checkpoint: the training set and its checks, LoRA defaults, the TRL trainer."""
