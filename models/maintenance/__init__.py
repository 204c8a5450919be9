"""Maintenance prediction per vehicle slot: service due, oil life, 12 V battery and EV pack health."""
