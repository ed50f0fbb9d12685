"""Logging the two chat flavors as MLflow models; each module is the code one flavor's logged model runs."""
