"""The paper's placement rule, on any backbone's stages.

The authors place the CNL responses (and the five NL blocks of the baseline) at every other
block: two in res3 and three in res4 of ResNet-50, the query at the second-to-last block of
res5. Generalised: 3 in a backbone's second-to-last stage and 2 in the one before, spaced
from each stage's end, the query the last stage's second-to-last block.
"""

from __future__ import annotations

from cnl.errors import InvalidValue

RESPONSES_PER_STAGE = (3, 2)  # second-to-last stage, the one before it (the paper's ResNet-50)


def spaced_blocks(depth: int, count: int) -> list[int]:
    """The last block of each of ``count`` equal chunks, counted from the stage's end.

    4 blocks, 2 modules -> 1, 3; 6 blocks, 3 modules -> 1, 3, 5 (the paper's ResNet-50).
    """
    if count == 0:
        return []
    step = depth // count
    return [depth - 1 - step * (count - 1 - k) for k in range(count)]


def regular(count: int, depth: int) -> list[int]:
    """``count`` indices spread evenly over ``0 .. depth - 1``, both ends included."""
    if count == 1:
        return [depth - 1]
    return [round(k * (depth - 1) / (count - 1)) for k in range(count)]


def default_placement(stage_blocks: list[list[str]]) -> tuple[str, tuple[str, ...]]:
    """(query, responses) by the paper's rule on a backbone's stages.

    Several stages: 3 responses in the second-to-last stage and 2 in the one before, at
    ``spaced_blocks`` (a short stage hands its surplus to the stage before it); the query
    is the second-to-last block of the last stage. One stage (ViT): five blocks evenly
    spread over its first three quarters, the query its second-to-last block.
    """
    if not stage_blocks:
        raise InvalidValue("no stages found: place modules by name")
    last = stage_blocks[-1]
    query = last[-2] if len(last) > 1 else last[-1]
    if len(stage_blocks) == 1:
        early = last[: max(5, 3 * len(last) // 4)]
        if len(early) < 5 or len(last) < 7:
            raise InvalidValue(f"a single stage of {len(last)} blocks is too short for five responses and a query")
        return query, tuple(early[i] for i in regular(5, len(early)))
    chosen: list[str] = []
    carried = 0
    shares = list(RESPONSES_PER_STAGE) + [0] * (len(stage_blocks) - 1 - len(RESPONSES_PER_STAGE))
    for blocks, share in zip(reversed(stage_blocks[:-1]), shares):
        count = min(share + carried, len(blocks))
        carried = share + carried - count
        chosen = [blocks[i] for i in spaced_blocks(len(blocks), count)] + chosen
    if carried:
        raise InvalidValue("too few blocks before the last stage for five responses: place modules by name")
    return query, tuple(chosen)
