"""Measurement: timing harness, environment capture, synthetic inputs, external baselines."""
