"""Shifting DA / DT / TM values by whole days (Retain Longitudinal, Modified Dates).

A whole-day shift keeps every interval between dates and times of one patient and
leaves times of day alone, so TM values are kept as they are. Values that do not
parse are replaced by a dummy rather than passed through: a date we cannot read is a
date we cannot vouch for.
"""
from __future__ import annotations

from datetime import date, timedelta

DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}


def shift_da(value: str, days: int) -> str:
    """Shift one DA value (YYYYMMDD); a range ('A-B') shifts both ends."""
    if "-" in value:
        return "-".join(shift_da(part, days) if part else "" for part in value.split("-"))
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return DUMMY["DA"]
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return DUMMY["DA"]
    try:
        return (day + timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return DUMMY["DA"]


def shift_dt(value: str, days: int) -> str:
    """Shift one DT value; only its date part moves (time and offset stay)."""
    text = value.strip()
    if len(text) < 4 or not text[:4].isdigit():
        return DUMMY["DT"]
    if len(text) < 8:  # year or year+month precision: shift the year/month via a full date
        padded = text + "0101"[len(text) - 4:]
        return shift_da(padded, days)[: len(text)]
    return shift_da(text[:8], days) + text[8:]


def shift_value(vr: str, value: str, days: int) -> str:
    """Shift a (possibly multi-valued, backslash-separated) string value of VR DA/DT/TM."""
    if vr == "TM":
        return value
    func = shift_da if vr == "DA" else shift_dt
    return "\\".join(func(v, days) if v.strip() else v for v in value.split("\\"))
