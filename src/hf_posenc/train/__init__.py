"""The training engine, its checkpoints and the typed run configs."""
