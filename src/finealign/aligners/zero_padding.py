"""DRL's fixed-length zero padding, an option of the token-wise max aligners (mean_max, weighted_mean_max).

DRL (foolwood/DRL tvr/models/modeling.py, `wti_interaction`) pads every caption to `max_words` token
slots and every video to `max_frames` frame slots, multiplies the token similarities by both masks
and then takes each token's max over *all* slots of the other side, padded ones included. A padded
slot scores 0, so a token's best match in an item with fewer real tokens than the fixed length is
max(best real similarity, 0). That is systematic, not a property of the batch: the padding is fixed
by the item's length alone (on MSR-VTT with 12 frames the video side is rarely padded, while a
caption of fewer than 32 tokens, i.e. nearly every caption, is).

finealign masks padding exactly by default. `zero_pad_text: N` treats every caption as padded to N
slots (so each region's best word is floored at 0 when the caption has fewer than N real tokens),
`zero_pad_visual: N` every visual item to N slots (each word's best region floored at 0). An item
with N or more real tokens has no padded slot (DRL would have cut it to N; truncation is the
encoder's business here). null (the default) is off.
"""

from __future__ import annotations

from torch import Tensor

from finealign.checks import check_positive_int
from finealign.errors import ConfigError
from finealign.tokens import TokenBatch


def check_zero_padding(zero_pad_visual: int | None, zero_pad_text: int | None, direction: str) -> None:
    """Both lengths are null or positive ints, and each floors a direction the aligner computes.

    `direction` as the kernels name it: "text" (word → best region), "visual" (region → best
    word) or "both". A length whose direction is not computed would change nothing: a ConfigError.
    """
    check_positive_int("zero_pad_visual", zero_pad_visual, optional=True)
    check_positive_int("zero_pad_text", zero_pad_text, optional=True)
    if zero_pad_visual is not None and direction == "visual":
        raise ConfigError(
            "zero_pad_visual floors each word's best region, which direction='visual' does not compute; "
            "use direction 'text' or 'both', or zero_pad_visual: null"
        )
    if zero_pad_text is not None and direction == "text":
        raise ConfigError(
            "zero_pad_text floors each region's best word, which direction='text' does not compute; "
            "use direction 'both', or zero_pad_text: null"
        )


def has_zero_slots(batch: TokenBatch, length: int | None) -> bool:
    """Whether some item of `batch` has fewer than `length` real tokens (so DRL's 0 joins its max)."""
    return length is not None and bool((batch.mask.sum(-1) < length).any())


def floor_at_zero_padding(best: Tensor, other_mask: Tensor, length: int | None) -> Tensor:
    """Each token's best similarity over the other side, with DRL's padded slots joining the max.

    best: (..., L) the max over the other item's real tokens (padding of the own side may hold
    -inf: it stays ignored by the pooling that follows, which only reads real entries).
    other_mask: (..., L_other), the other side's mask broadcast to best's leading dims.
    Where the other item has fewer than `length` real tokens, the result is max(best, 0).
    """
    if length is None:
        return best
    padded = (other_mask.sum(-1) < length).unsqueeze(-1)
    return best.where(~padded, best.clamp_min(0))
