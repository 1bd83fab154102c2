"""Launchers: local, TPU pod, SLURM, and N local CPU processes."""
