"""Example finealign plugin package."""
