"""Exact-dedup keys for image URLs, and the dedup settings of a build.

Exact dedup runs before download (it saves fetches), on a key that two spellings of the same resource
share. The normalisation below only applies rewrites that cannot change which resource a server returns.
"""

from __future__ import annotations

import hashlib
import logging
import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from witbuild.dedup.phash import resolve_bands

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": "80", "https": "443"}
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")


def normalize_url(url: str) -> str:
    """The key for exact URL dedup; never raises.

    Rewritten (RFC 3986 §6.2.2 equivalences that hold on every server):

    * scheme and host lower-cased; a Unicode host is lower-cased but neither encoded to nor decoded from
      punycode (IDNA conversion can fail or differ between IDNA 2003/2008; both spellings are rare);
    * the default port dropped (http :80, https :443, and an empty port as in ``host:/``), leading zeros
      of other ports dropped;
    * the fragment dropped (never sent to the server);
    * an empty path becomes ``/``;
    * the hex digits of ``%xx`` escapes upper-cased (``%c3%a9`` → ``%C3%A9``).

    Kept as is: userinfo, path and query, including their case (servers may treat them case-sensitively),
    ``%xx`` of unreserved characters (decoding them is RFC-safe but some signed-URL CDNs compare the raw
    string), dot segments, a trailing dot of the host and the order of query parameters. An empty query
    (``a.jpg?``) is dropped with its ``?`` (``urlsplit`` cannot tell it from no query).

    Input that is not an absolute URL with a host (no scheme, ``data:``, unparsable such as ``http://[::1``)
    comes back stripped but otherwise unchanged; None gives "".
    """
    if not isinstance(url, str):
        return "" if url is None else str(url)
    s = url.strip()
    try:
        parts = urlsplit(s)
        if not parts.scheme or not parts.netloc:
            return s
        scheme = parts.scheme.lower()
        userinfo, at, hostport = parts.netloc.rpartition("@")
        host, port = _split_port(hostport)
        if port is not None and port.isdigit():
            port = str(int(port))
        if port == "" or port == DEFAULT_PORTS.get(scheme):
            port = None
        netloc = f"{userinfo}{at}{host.lower()}" + ("" if port is None else f":{port}")
        out = f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        return _PERCENT.sub(lambda m: m.group(0).upper(), out)
    except ValueError:  # urlsplit on a malformed IPv6 literal, or an odd netloc
        return s


def uid_of(url: str, text: str) -> str:
    """Stable pair id: the same (url, text) gets the same id in every build (extract gives each row the one of its
    URL as found on the page)."""
    return hashlib.blake2b(f"{url}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def pair_key(url: str, text: str) -> str:
    """The identity of a pair as dedup's first layer sees it, (normalised URL, text): balancing counts and draws
    pairs by it, so that it works on the pool dedup leaves, as MetaCLIP does. It is the row's uid when the URL is
    already in normal form."""
    return uid_of(normalize_url(url), text)


def _split_port(hostport: str) -> tuple[str, str | None]:
    """(host, port or None); IPv6 literals keep their brackets."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        rest = hostport[end + 1 :]
        return hostport[: end + 1], rest[1:] if rest.startswith(":") else None
    if ":" in hostport:
        host, _, port = hostport.rpartition(":")
        return host, port
    return hostport, None


class DedupConfig(BaseModel):
    """How pairs are deduplicated: exact URL (+ text) before download; image bytes, near duplicates (pHash,
    then a colour check on pHash-near pairs) and evaluation-set decontamination after.

    ``phash_bands`` below ``phash_threshold + 1`` is allowed, with a logged warning: fewer, wider bands
    give fewer candidates, but a pair at distance d ≥ bands can differ in every band and then is never
    compared. For uniformly placed differing bits, 4 bands at distance 4 miss 10.3% of such pairs
    (16⁴ of the C(64,4) ways to place 4 bits hit all four 16-bit bands). Pairs within bands - 1 bits are
    still always found. More bands than threshold + 1 keep the guarantee but narrow each band (more
    random candidates), so threshold + 1 is the default.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    one_text_per_image: bool = Field(
        False,
        description="False: an image keeps each of its distinct texts (exact dedup on (normalised URL, text)), "
        "unless exact_image is on, which fetches each URL once; True: one pair per normalised URL.",
    )
    shuffle_seed: int = Field(0, description="Seed of the global shuffle before download.")
    phash_threshold: int = Field(
        4, ge=0, le=32, description="Largest Hamming distance between 64-bit pHashes that counts as a near duplicate."
    )
    phash_bands: int | None = Field(
        None,
        ge=1,
        le=64,
        description="LSH bands; None: threshold + 1, the fewest with which every pair within the threshold "
        "shares an identical band (pigeonhole). Fewer bands lose recall (warned).",
    )
    decontaminate: str | None = Field(
        None, description="Folder of evaluation images; samples near-duplicate to any of them are removed."
    )
    near_dup: bool = Field(
        True,
        description="Drop near duplicates: pairs within phash_threshold bits that also pass the colour check. In key "
        "order each sample not yet removed is kept and removes its near duplicates (no chains: every removed "
        "sample is recorded with the kept one it duplicates, in stages/finalize/near_duplicates.parquet).",
    )
    colour_check: bool = Field(
        True,
        description="Second check on every pHash-near pair before a removal: the colour difference of 16x16 "
        "thumbnails (colour_max_mean, colour_max_tail). pHash sees grey levels only; without this, colour "
        "variants of one outline and many distinct simple drawings count as duplicates.",
    )
    colour_max_mean: float = Field(
        5.0,
        gt=0,
        le=100,
        description="Largest mean CIELAB colour difference (ΔE; each 16x16 thumbnail pixel against the closest of "
        "the other's 3x3 neighbours, after one brightness gain) between near duplicates. Measured on generated "
        "pairs (benchmarks/bench_dedup.py --quality-only --per-kind 80 --quality-seed 1): the 437 copies within "
        "4 pHash bits (resized, re-encoded, PNG/JPEG-converted, 1-5% cropped, ±6-10% brightness) 0-5.9, 1 above "
        "5; colour variants of one outline 6.6-122.",
    )
    colour_max_tail: float = Field(
        20.0,
        gt=0,
        le=200,
        description="Largest 95th percentile of the same per-pixel ΔE: no part covering 5% of the picture may "
        "change colour by more (a small recoloured shape). Measured as above: copies 0-28, 3 of 437 above 20; "
        "colour variants 31-149. With both defaults 433 of those 437 copies are removed, all 80 colour "
        "variants and 35 of 71 distinct single-shape drawings within 4 pHash bits are kept.",
    )
    exact_image: bool = Field(
        True, description="Drop samples whose image bytes (sha256) were already seen; with it on, a URL repeated "
        "with other texts is fetched once (the dedup stage drops the repeats as repeated_url).")

    @model_validator(mode="after")
    def _bands_cover_threshold(self) -> DedupConfig:
        bands = self.bands
        if bands < self.phash_threshold + 1:
            log.warning(
                "dedup.phash_bands=%d < phash_threshold + 1 = %d: pairs %d..%d bits apart may share no band and "
                "be missed (see DedupConfig)",
                bands,
                self.phash_threshold + 1,
                bands,
                self.phash_threshold,
            )
        return self

    @property
    def bands(self) -> int:
        """The band count in effect (``phash_bands`` or threshold + 1)."""
        return resolve_bands(self.phash_threshold, self.phash_bands)
