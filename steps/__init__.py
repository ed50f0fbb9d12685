"""Thin command-line entry points of the MLproject; the logic lives in `slmflow`."""
