"""Simulated sample, probe and diffraction (and, later, ophyd devices)."""
