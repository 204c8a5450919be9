"""CAN frames as arrays: the block every CAN source fills and every decoder and detector reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAN_EFF_FLAG = 0x80000000
CAN_ERR_FLAG = 0x20000000
CAN_EFF_MASK = 0x1FFFFFFF


@dataclass(frozen=True, slots=True)
class Frames:
    """A block of CAN frames: row ``i`` is one frame; ``data`` is zero-padded to the widest frame."""

    ts_us: np.ndarray  # int64 microseconds since the epoch
    can_id: np.ndarray  # uint32 arbitration id (without flags)
    extended: np.ndarray  # bool, 29-bit id
    dlc: np.ndarray  # uint8, payload length in bytes
    data: np.ndarray  # uint8 (n, 8) for classic CAN, (n, 64) when CAN FD frames are present

    def __len__(self) -> int:
        return len(self.ts_us)

    def slice(self, start: int, stop: int) -> Frames:
        return Frames(
            self.ts_us[start:stop],
            self.can_id[start:stop],
            self.extended[start:stop],
            self.dlc[start:stop],
            self.data[start:stop],
        )
