"""Enrolled members' face embeddings: enrol only with consent, match on the device, delete on withdrawal."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from core.errors import ConsentError

log = logging.getLogger(__name__)


class FaceGallery:
    """Embeddings per member in one ``.npz`` file (no images); ``consent(member_id) -> bool``.

    ``consent`` is any callable, e.g. ``lambda m: crm.store.has_consent(session, m, "face")``,
    so the gate side never imports SQLAlchemy.
    """

    def __init__(
        self,
        path: Path | str,
        consent: Callable[[str], bool],
        threshold: float = 0.5,
        max_per_member: int = 5,
    ) -> None:
        self.path = Path(path)
        self.consent = consent
        self.threshold, self.max_per_member = threshold, max_per_member
        self._emb: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                self._emb = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}

    def __contains__(self, member_id: str) -> bool:
        return member_id in self._emb

    @property
    def members(self) -> list[str]:
        return sorted(self._emb)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, **self._emb)  # type: ignore[arg-type]
        os.replace(tmp, self.path)

    def enrol(self, member_id: str, embedding: np.ndarray) -> int:
        """Add one embedding for a consenting member; returns how many they now have."""
        if not self.consent(member_id):
            raise ConsentError(f"member {member_id} has not consented to face recognition")
        vec = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        vec /= max(1e-12, float(np.linalg.norm(vec)))
        old = self._emb.get(member_id)
        if old is not None and old.shape[1] != vec.shape[1]:
            raise ValueError(f"embedding size {vec.shape[1]} != enrolled {old.shape[1]}")
        stacked = vec if old is None else np.concatenate([old, vec])[-self.max_per_member :]
        self._emb[member_id] = stacked
        self._save()
        return len(stacked)

    def withdraw(self, member_id: str) -> bool:
        """Delete every embedding of a member (consent withdrawn); True if there were any."""
        if self._emb.pop(member_id, None) is None:
            return False
        self._save()
        log.info("face embeddings of %s deleted (consent withdrawn)", member_id)
        return True

    def sync_consent(self, member_ids: Iterable[str] | None = None) -> list[str]:
        """Delete members whose consent is gone (``consent`` re-checked); returns who was removed."""
        ids = list(self._emb) if member_ids is None else [m for m in member_ids if m in self._emb]
        gone = [m for m in ids if not self.consent(m)]
        for m in gone:
            self._emb.pop(m, None)
        if gone:
            self._save()
        return gone

    def match(self, embedding: np.ndarray) -> tuple[str, float] | None:
        """The best member by cosine similarity if it reaches ``threshold``."""
        if not self._emb:
            return None
        vec = np.asarray(embedding, dtype=np.float32).reshape(-1)
        vec = vec / max(1e-12, float(np.linalg.norm(vec)))
        best, best_sim = None, -1.0
        for member, embs in self._emb.items():
            if embs.shape[1] != vec.shape[0]:
                continue
            sim = float((embs @ vec).max())
            if sim > best_sim:
                best, best_sim = member, sim
        if best is None or best_sim < self.threshold:
            return None
        return best, best_sim
