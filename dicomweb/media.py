"""Accept-header negotiation for WADO-RS (PS3.18 8.7): which media type and transfer syntax to send."""
from __future__ import annotations

import dataclasses
import re

from archive.errors import InvalidRequest
from archive.recent import Recent

EXPLICIT_LE = "1.2.840.10008.1.2.1"
NATIVE = {"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
#: Transfer syntax -> media type of its frames.
FRAME_MEDIA_TYPE = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: Media type -> its default transfer syntax when the request names none (PS3.18 Table 8.7.3-5).
DEFAULT_SYNTAX = {
    "application/octet-stream": EXPLICIT_LE, "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80", "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92", "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5", "image/x-jls": "1.2.840.10008.1.2.4.80",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
}


@dataclasses.dataclass(frozen=True)
class MediaRange:
    type: str  # e.g. multipart/related, image/jpeg, */*
    params: dict[str, str]
    q: float

    @property
    def multipart(self) -> bool:
        return self.type == "multipart/related"

    @property
    def part_type(self) -> str:
        """The media type of the parts (or of the body, for single part)."""
        return self.params.get("type", "*/*") if self.multipart else self.type


_PARAM = re.compile(r';\s*([A-Za-z0-9_\-]+)\s*=\s*("([^"]*)"|[^;,\s]*)')


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges in preference order (q descending, then as written)."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    out = []
    # split on commas that are not inside quotes
    for n, item in enumerate(re.findall(r'(?:[^,"]|"[^"]*")+', header)):
        item = item.strip()
        if not item:
            continue
        media = item.split(";", 1)[0].strip().lower()
        params = {m.group(1).lower(): (m.group(3) if m.group(3) is not None else m.group(2))
                  for m in _PARAM.finditer(item[len(media):] if ";" in item else "")}
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            raise InvalidRequest("Accept header has a malformed q value") from None
        if "type" in params:
            params["type"] = params["type"].lower()
        out.append((q, -n, MediaRange(media, params, q)))
    return [m for _, _, m in sorted(out, key=lambda t: (t[0], t[1]), reverse=True) if m.q > 0]


@dataclasses.dataclass(frozen=True)
class FrameChoice:
    media_type: str
    transfer_syntax: str
    decode: bool  # stored frames must be decoded to native
    multipart: bool


def choose_frame_format(accept: list[MediaRange], stored_ts: str, single: bool) -> FrameChoice | None:
    """The first acceptable way to send frames stored in ``stored_ts``, or None (406)."""
    stored_type = "application/octet-stream" if stored_ts in NATIVE else FRAME_MEDIA_TYPE.get(stored_ts)
    for r in accept:
        if not r.multipart and not single and r.type not in ("*/*",):
            continue
        multipart = r.multipart or r.type == "*/*" or not single
        part = r.part_type
        wanted_ts = r.params.get("transfer-syntax")
        if part in ("*/*", "*"):
            if stored_type and wanted_ts in (None, "*", stored_ts):
                return FrameChoice(stored_type, stored_ts, False, multipart)
            continue
        if part == "application/octet-stream":
            if wanted_ts == "*" and stored_type:
                return FrameChoice(stored_type, stored_ts, False, multipart)
            if wanted_ts in (None, EXPLICIT_LE):
                return FrameChoice(part, EXPLICIT_LE, stored_ts not in NATIVE, multipart)
            if wanted_ts == stored_ts:
                return FrameChoice(part, stored_ts, False, multipart)
            continue
        if part in DEFAULT_SYNTAX and stored_type is not None:
            canonical = "image/jls" if part == "image/x-jls" else "image/dicom-rle" if part == "image/x-dicom-rle" else part
            if canonical != stored_type:
                continue
            if wanted_ts in (None, "*", stored_ts):
                return FrameChoice(part, stored_ts, False, multipart)
    return None


#: Accept headers longer than this are negotiated each time, not remembered (bounded memory).
REMEMBERED_ACCEPT_CHARS = 512
_frame_formats: Recent[tuple[str | None, str, bool], FrameChoice] = Recent(256)


def frame_format(header: str | None, stored_ts: str, single: bool) -> FrameChoice | None:
    """``choose_frame_format(parse_accept(header), ...)``, remembered per (header, stored syntax, single).

    A viewer sends the same Accept header with every frame, and negotiating it again was 14% of
    the fast frame path's CPU (a pure function of its inputs, so nothing here can go stale). A
    header that does not parse raises InvalidRequest, as before, and is not remembered.
    """
    key = (header, stored_ts, single)
    choice = _frame_formats.get(key)
    if choice is None:
        choice = choose_frame_format(parse_accept(header), stored_ts, single)
        if choice is not None and (header is None or len(header) <= REMEMBERED_ACCEPT_CHARS):
            _frame_formats.put(key, choice)
    return choice


def accepts(accept: list[MediaRange], *types: str) -> str | None:
    """The first of ``types`` (single-part media types) that ``accept`` allows."""
    for r in accept:
        for t in types:
            if r.type in ("*/*", t) or (r.type.endswith("/*") and t.startswith(r.type[:-1])):
                return t
    return None


def accepts_multipart(accept: list[MediaRange], part_type: str) -> dict[str, str] | None:
    """The params of the first ``multipart/related; type=part_type`` (or */*) range, else None."""
    for r in accept:
        if r.type == "*/*" or (r.multipart and r.part_type in (part_type, "*/*")):
            return r.params
    return None
