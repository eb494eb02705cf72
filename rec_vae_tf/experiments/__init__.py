"""The main job, the reproduction grid, and their plots."""
