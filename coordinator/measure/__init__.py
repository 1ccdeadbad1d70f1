"""Measurement: histograms, per-window aggregation, resource and generator-health readings. Pure."""
