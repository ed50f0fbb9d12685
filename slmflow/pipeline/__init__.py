"""The MLproject pipeline: step contracts, the step runner (child runs, cache keys, reuse), the step CLI wrapper."""
