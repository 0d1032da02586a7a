"""Bluesky plans: Bragg ptychography and DF-XRM scans with their checks, alignment, replay, recorded acquisitions."""
