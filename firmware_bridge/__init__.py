"""Talking to hardware and its logs: CAN frames, DBC decoding, OBD-II, GNSS, cameras."""
