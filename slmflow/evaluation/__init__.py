"""Measuring chat models on an eval set: the eval set (dataset), scores (metrics), the process-isolated
runner (runner), plots (plots) and what goes to MLflow (logging)."""
