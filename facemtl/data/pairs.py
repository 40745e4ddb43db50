"""Batch composition for joint training, built so the DeepID2 verification loss always has pairs.

Each batch holds ``identities_per_batch`` chunks of ``images_per_identity`` images, a chunk being images of
one identity (an identity with many images may give two chunks to one batch), so every batch has
same-identity pairs and many different-identity pairs; plus ``others_per_batch`` samples that
carry no identity (MTFL), each repeated ``views`` times: two differently augmented views of one face form
a positive pair for the verification loss, and every other face a negative one. Batches depend only on
(seed, epoch), so runs are reproducible and resumable, and under DDP each rank takes a disjoint shard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How many samples of each kind one batch holds."""

    identities_per_batch: int = 16
    images_per_identity: int = 4
    others_per_batch: int = 32
    views: int = 2

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity + self.others_per_batch * self.views


class MultiTaskBatchSampler:
    """Epoch-wise list of index batches for one rank: identity chunks plus a stream of other samples."""

    def __init__(self, identity: np.ndarray, plan: BatchPlan, seed: int = 0, rank: int = 0, world: int = 1,
                 indices: np.ndarray | None = None) -> None:
        """``identity`` per sample (-1 = none); only ``indices`` (default: all samples) are ever drawn."""
        if plan.images_per_identity < 2 and plan.identities_per_batch > 0:
            raise ConfigError("images_per_identity must be >= 2 so batches hold same-identity pairs")
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} outside world size {world}")
        self.plan, self.seed, self.rank, self.world = plan, seed, rank, world
        identity = np.asarray(identity)
        pool = np.arange(len(identity)) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        ids = identity[pool]
        order = np.argsort(ids, kind="stable")
        groups = np.split(pool[order], np.flatnonzero(np.diff(ids[order])) + 1)
        self.by_identity = [g for g in groups if len(g) and identity[g[0]] >= 0]
        self.others = pool[ids < 0]
        if plan.identities_per_batch and len(self.by_identity) < plan.identities_per_batch:
            raise ConfigError(f"{len(self.by_identity)} identities cannot fill {plan.identities_per_batch} per batch")
        if plan.others_per_batch and len(self.others) == 0:
            raise ConfigError("others_per_batch > 0 but there are no samples without identity")
        self._global_batches = self._count_global_batches()
        if self._global_batches < world:
            raise ConfigError("too little data for one batch per rank")

    def _count_global_batches(self) -> int:
        k, p = self.plan.images_per_identity, self.plan.identities_per_batch
        if p == 0:
            return len(self.others) // max(1, self.plan.others_per_batch)
        chunks = sum(max(1, len(ix) // k) for ix in self.by_identity)
        return chunks // p

    def __len__(self) -> int:
        return self._global_batches // self.world

    def _identity_chunks(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Every identity's images shuffled and cut into chunks of K (small identities drawn with repeats)."""
        k = self.plan.images_per_identity
        chunks = []
        for ix in self.by_identity:
            if len(ix) < k:
                chunks.append(rng.choice(ix, size=k, replace=True))
                continue
            perm = rng.permutation(ix)
            chunks.extend(perm[j * k:(j + 1) * k] for j in range(len(ix) // k))
        order = rng.permutation(len(chunks))
        return [chunks[j] for j in order]

    def _others(self, epoch: int, count: int) -> np.ndarray:
        """``count`` samples from an endless stream of shuffled passes over the others, from this epoch on."""
        n = len(self.others)
        start = epoch * self._global_batches * self.plan.others_per_batch
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            cycle, offset = divmod(start + filled, n)
            perm = np.random.default_rng([self.seed, 7, cycle]).permutation(self.others)
            take = min(n - offset, count - filled)
            out[filled:filled + take] = perm[offset:offset + take]
            filled += take
        return out

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (same for a given seed, epoch, rank and world size)."""
        p, m = self.plan.identities_per_batch, self.plan.others_per_batch
        rng = np.random.default_rng([self.seed, 3, epoch])
        chunks = self._identity_chunks(rng) if p else []
        others = self._others(epoch, self._global_batches * m) if m else np.empty(0, np.int64)
        batches = []
        for b in range(self._global_batches):
            ids = np.concatenate(chunks[b * p:(b + 1) * p]) if p else np.empty(0, np.int64)
            extra = np.repeat(others[b * m:(b + 1) * m], self.plan.views)
            batches.append(np.concatenate([ids, extra]).astype(np.int64))
        return batches[self.rank:len(self) * self.world:self.world]
