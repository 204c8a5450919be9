"""CAN-bus intrusion detection from frame timing and payload statistics per id (numba)."""
