"""What the download did to images on their way into a shard, counted in the process that downloads it.

img2dataset downloads a shard in one process (a Spark Python worker, or a process of its own), from the first
image to the closing of the shard's writer, one shard after another. The wrappers around its resizer
(witbuild/as_shown.py, witbuild/bit_depth.py) note what they do in :data:`EVENTS`; the shard's writer takes
the difference between its opening and its closing as the shard's events and saves them beside the shard
(witbuild/dedup/shard_signatures.py), where the download stage reads and counts them.
"""

from __future__ import annotations

from collections import Counter

EVENTS: Counter[str] = Counter()  # this process's events since it started


def note(event: str) -> None:
    EVENTS[event] += 1


def since(start: Counter[str]) -> dict[str, int]:
    """The events noted since ``start`` (a copy of :data:`EVENTS`)."""
    return {event: n - start[event] for event, n in EVENTS.items() if n > start[event]}
