"""Frames over ZeroMQ to the online reconstructor, its service, the live engine, Tiled publication, the viewer."""
