"""Hydra apps: the only code that reads a config (configs/) and turns it into library objects."""
