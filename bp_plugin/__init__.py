"""Core science of the Bragg ptychography plugin: geometry, transforms, data I/O, CLI."""
