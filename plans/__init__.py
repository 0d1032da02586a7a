"""Placeholder package; see README."""
