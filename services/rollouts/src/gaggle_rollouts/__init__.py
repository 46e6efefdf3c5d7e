"""Gaggle rollouts: what every device should run, actions, and rollouts in waves."""
