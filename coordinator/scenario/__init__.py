"""Scenario files: YAML in, frozen and validated models out, every problem with its key path. Pure models."""
