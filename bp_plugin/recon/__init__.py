"""Reconstruction engine: joint object, probe and background refinement (physics.md sections 2-3)."""
