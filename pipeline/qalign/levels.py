"""The Q-Align syllabus: rating levels, MOS -> level (Eq. 1), and level probabilities -> score (Eq. 3-4).

Humans rate in words; a mean opinion score (MOS) is the average of those words mapped to numbers. Q-Align teaches a
model to answer with the word and reads the score back from the next-token distribution over the level words only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Levels:
    """Level words from best to worst, with the score each one stands for (best first)."""

    words: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
    weights: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.words) < 2 or len(self.words) != len(self.weights):
            raise ValueError(f"need >= 2 level words and one weight each, got {self.words} / {self.weights}")
        if len(set(self.words)) != len(self.words):
            raise ValueError(f"level words must be distinct: {self.words}")
        if any(a <= b for a, b in zip(self.weights, self.weights[1:])):
            raise ValueError(f"weights must strictly decrease from the best level to the worst: {self.weights}")

    def __len__(self) -> int:
        return len(self.words)

    @property
    def columns(self) -> list[str]:
        """Output column names, one float column per level: p_excellent, p_good, ..."""
        return [f"p_{w}" for w in self.words]

    def probabilities(self, level_logits: np.ndarray) -> np.ndarray:
        """Close-set softmax (Eq. 3): a softmax over the level words' logits only, in float64 for stable output."""
        logits = np.asarray(level_logits, dtype=np.float64)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def score(self, probs: np.ndarray) -> np.ndarray:
        """Eq. 4: the probability-weighted level score, on this syllabus's scale (1..5 by default)."""
        return np.asarray(probs, dtype=np.float64) @ np.asarray(self.weights, dtype=np.float64)

    def score_unit(self, probs: np.ndarray) -> np.ndarray:
        """The same score on the 0..1 convention (bad=0 .. excellent=1): an affine map of the weighted score."""
        lo, hi = min(self.weights), max(self.weights)
        return (self.score(probs) - lo) / (hi - lo)

    def level_of_mos(self, mos: float | np.ndarray, scale_min: float, scale_max: float) -> np.ndarray:
        """Eq. 1: the level index (0 = best) of a MOS, by equal-width intervals between the scale's min and max.

        Level i (1 = worst) covers m + (i-1)/n (M-m) < s <= m + i/n (M-m): an interval's upper edge belongs to it,
        and the scale's min itself is the worst level.
        """
        if not scale_max > scale_min:
            raise ValueError(f"scale_max must exceed scale_min, got [{scale_min}, {scale_max}]")
        mos = np.asarray(mos, dtype=np.float64)
        if np.any(~np.isfinite(mos)) or np.any(mos < scale_min) or np.any(mos > scale_max):
            raise ValueError(f"MOS outside its scale [{scale_min}, {scale_max}]: {mos}")
        n = len(self.words)
        # round before ceil so a MOS exactly on an edge (1.8 on 1..5) is not pushed up by float error
        position = np.round((mos - scale_min) / (scale_max - scale_min) * n, 9)
        level_from_worst = np.clip(np.ceil(position), 1, n).astype(np.int64)  # 1 = worst .. n = best
        return n - level_from_worst

    def word_of_mos(self, mos: float, scale_min: float, scale_max: float) -> str:
        return self.words[int(self.level_of_mos(mos, scale_min, scale_max))]


DEFAULT_LEVELS = Levels()
