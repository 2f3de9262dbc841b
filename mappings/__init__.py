"""The base mapping set, shipped as package data (read with importlib.resources)."""
