"""Images whose metadata lie past their first 64 kB: a large XMP packet spliced in before their EXIF and ICC
profile, as Photoshop writes its XMP (with its document history) and its resource block, each up to 64 kB, before
the profile."""

from __future__ import annotations

import struct
import zlib

XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\0"


def xmp_packet(size: int) -> bytes:
    """An XMP packet of about ``size`` bytes (a description of that length)."""
    return (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/'
            b'elements/1.1/" dc:description="' + b"x" * size + b'"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def late_jpeg(jpeg: bytes, segments: int = 2) -> bytes:
    """``jpeg`` with ``segments`` XMP segments of ~60 kB each before its EXIF and ICC segments (after APP0)."""
    start = 4 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 2
    body = XMP_NAMESPACE + xmp_packet(60_000)
    xmp = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return jpeg[:start] + xmp * segments + jpeg[start:]


def late_png(png: bytes, size: int = 150_000) -> bytes:
    """``png`` with an iTXt XMP chunk of about ``size`` bytes right after IHDR, before its iCCP chunk."""
    data = b"XML:com.adobe.xmp\0\0\0\0\0" + xmp_packet(size)
    chunk = struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(">I", zlib.crc32(b"iTXt" + data))
    return png[:33] + chunk + png[33:]  # 33: the signature and IHDR
