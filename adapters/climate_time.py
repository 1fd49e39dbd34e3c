"""Decoding of CF time coordinates: the one place every field's time passes through.

:func:`decode_time_coords` turns numeric coordinates that carry CF time
``units`` into dates, for files (opened with ``decode_times=False``) and for
in-memory Datasets alike:

- ``<unit> since <date>`` with seconds ... days: xarray's CF decoder;
- ``months since <date>`` / ``years since <date>``: calendar steps in the
  coordinate's calendar (a year is 12 months; a fraction of a month is that
  fraction of the month's length, so the mid-month convention 0.5, 1.5, ...
  gives mid-month dates);
- ``day as %Y%m%d.%f`` (CDO's absolute time axis): the digits are the date,
  the fraction the time of day.

Dates in the standard, gregorian and proleptic_gregorian calendars become
``datetime64[ns]`` where they fit, all others ``cftime`` objects (as xarray
does). Anything that cannot be decoded raises a one-line ``TimeDecodingError`` (a ``ValueError``) that
names the coordinate, the problem and the fix.

>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset(coords={"time": ("time", [0, 1, 13], {"units": "months since 1960-01-01",
...                                                        "calendar": "360_day"})})
>>> [d.isoformat() for d in decode_time_coords(ds)["time"].values]
['1960-01-01T00:00:00', '1960-02-01T00:00:00', '1961-02-01T00:00:00']
"""

from __future__ import annotations

import re

import cftime
import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["decode_time_coords", "TimeDecodingError", "CF_CALENDARS", "is_time_units"]

CF_CALENDARS = ("standard", "gregorian", "proleptic_gregorian", "noleap", "365_day", "all_leap", "366_day",
                "360_day", "julian")
_DATETIME64_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
_MONTHS_PER_UNIT = {"month": 1, "months": 1, "mon": 1, "year": 12, "years": 12, "yr": 12, "yrs": 12}
_XARRAY_UNITS = ("nanoseconds", "nanosecond", "ns", "microseconds", "microsecond", "us", "milliseconds",
                 "millisecond", "ms", "seconds", "second", "sec", "secs", "s", "minutes", "minute", "min", "mins",
                 "hours", "hour", "hr", "hrs", "h", "days", "day", "d")
_SINCE = re.compile(r"^\s*([A-Za-z_]+)\s+since\s+(.+?)\s*$")
_CDO_ABSOLUTE = re.compile(r"^\s*days?\s+as\s+%Y%m%d(\.%f)?\s*$", re.IGNORECASE)
_REFERENCE = re.compile(r"^(-?\d{1,4})-(\d{1,2})(?:-(\d{1,2}))?(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.\d*)?)?)?"
                        r"\s*(?:Z|UTC|GMT|[+-]0{1,2}:?0{0,2})?$", re.IGNORECASE)
_FIX = "give it CF units such as 'days since 1960-01-01' and a CF calendar (on a copy of the file)"


class TimeDecodingError(ValueError):
    """A time coordinate that cannot be decoded (its message names the problem and the fix)."""


def is_time_units(units) -> bool:
    """True when ``units`` is a CF time (``<unit> since <date>``) or CDO absolute time encoding.

    >>> is_time_units("months since 1960-01-01"), is_time_units("day as %Y%m%d.%f"), is_time_units("degC")
    (True, True, False)
    """
    return isinstance(units, str) and bool(_SINCE.match(units) or _CDO_ABSOLUTE.match(units))


def decode_time_coords(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every numeric coordinate that carries CF time units decoded to dates.

    Coordinates that are already dates, or numbers without time units, pass
    through unchanged; ``ds`` itself is never modified.
    """
    decoded = {}
    for name, coord in ds.coords.items():
        units = coord.attrs.get("units")
        if np.issubdtype(coord.dtype, np.number) and is_time_units(units):
            decoded[name] = _decode(str(name), coord.variable)
    return ds.assign_coords(decoded) if decoded else ds


def _calendar(name: str, variable: xr.Variable) -> str:
    """The variable's CF calendar (default standard), checked against the CF list."""
    calendar = str(variable.attrs.get("calendar", "standard")).strip().lower()
    if calendar not in CF_CALENDARS:
        raise TimeDecodingError(f"the {name!r} coordinate has calendar {calendar!r}, which is not a CF "
                                f"calendar; set its calendar attribute to one of {', '.join(CF_CALENDARS)} "
                                "(on a copy of the file)")
    return calendar


def _decode(name: str, variable: xr.Variable) -> xr.Variable:
    """One time variable decoded: calendar steps, CDO absolute time or xarray's CF decoder."""
    calendar = _calendar(name, variable)
    units = str(variable.attrs["units"])
    values = np.asarray(variable.values, dtype=np.float64)
    if not np.isfinite(values).all():
        missing = int((~np.isfinite(values)).sum())
        raise TimeDecodingError(f"the {name!r} coordinate has {missing} missing value(s) (NaN or fill value); "
                                f"drop those steps first, e.g. ds.isel({name}=ds[{name!r}].notnull()) on the data "
                                "opened with decode_times=False (written to a new file for the command line)")
    match = _SINCE.match(units)
    if _CDO_ABSOLUTE.match(units):
        dates = [_cdo_date(name, value, calendar) for value in values.ravel()]
    elif match and match.group(1).lower() in _MONTHS_PER_UNIT:
        reference = _reference(name, units, match.group(2), calendar)
        months = values.ravel() * _MONTHS_PER_UNIT[match.group(1).lower()]
        dates = [_add_months(reference, m) for m in months]
    else:
        return _decode_with_xarray(name, variable, units, calendar, match)
    attrs = {k: v for k, v in variable.attrs.items() if k not in ("units", "calendar")}
    data = _as_dates(dates, calendar).reshape(values.shape)
    return xr.Variable(variable.dims, data, attrs, encoding={"calendar": calendar})


def _reference(name: str, units: str, text: str, calendar: str) -> cftime.datetime:
    """The reference date of ``<unit> since <text>`` in ``calendar``."""
    match = _REFERENCE.match(text)
    try:
        if match is None:
            raise ValueError(text)
        year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
        return cftime.datetime(year, month, day or 1, hour, minute, second, calendar=calendar)
    except ValueError:
        raise TimeDecodingError(f"the {name!r} coordinate has units {units!r} whose reference date {text!r} "
                                f"cannot be read; {_FIX}") from None


def _add_months(reference: cftime.datetime, months: float) -> cftime.datetime:
    """``reference`` plus whole calendar months (day clipped to the month's length) plus a fraction of a month."""
    if abs(months - round(months)) < 1e-5:  # float32 round-off of a whole number of months (< 30 s)
        months = float(round(months))
    whole = int(np.floor(months))
    year, month0 = divmod(reference.month - 1 + whole, 12)
    first = cftime.datetime(reference.year + year, month0 + 1, 1, calendar=reference.calendar)
    day = min(reference.day, first.daysinmonth)
    date = first.replace(day=day, hour=reference.hour, minute=reference.minute, second=reference.second)
    seconds = round((months - whole) * first.daysinmonth * 86400)
    return date + pd.Timedelta(seconds=seconds).to_pytimedelta() if seconds else date


def _cdo_date(name: str, value: float, calendar: str) -> cftime.datetime:
    """One value of CDO's ``day as %Y%m%d.%f``: YYYYMMDD digits plus a fraction of the day."""
    digits = int(np.floor(value))
    year, month, day = digits // 10000, digits // 100 % 100, digits % 100
    try:
        date = cftime.datetime(year, month, day, calendar=calendar)
    except ValueError:
        raise TimeDecodingError(f"the {name!r} coordinate holds {float(value)!r}, which is not a date in "
                                f"'day as %Y%m%d.%f' (calendar {calendar!r}); correct the value or {_FIX}") from None
    seconds = round((value - digits) * 86400)
    return date + pd.Timedelta(seconds=seconds).to_pytimedelta() if seconds else date


def _as_dates(dates: list, calendar: str) -> np.ndarray:
    """datetime64[ns] for the standard-like calendars where every date fits, else an array of cftime dates."""
    if calendar in _DATETIME64_CALENDARS and all(1678 <= d.year <= 2261 for d in dates):
        return np.array([np.datetime64(d.isoformat(), "ns") for d in dates], dtype="datetime64[ns]")
    out = np.empty(len(dates), dtype=object)
    out[:] = dates
    return out


def _decode_with_xarray(name: str, variable: xr.Variable, units: str, calendar: str, match) -> xr.Variable:
    """Seconds ... days since a date: xarray's CF decoder, its failures named in the toolkit's words."""
    unit = match.group(1) if match else units
    if match is None or unit.lower() not in _XARRAY_UNITS:
        raise TimeDecodingError(f"the {name!r} coordinate has units {units!r} with the unknown time unit "
                                f"{unit!r}; use seconds, minutes, hours, days, months or years since a date, e.g. "
                                "'days since 1960-01-01' (on a copy of the file)")
    try:
        decoded = xr.coders.CFDatetimeCoder().decode(variable, name=name)
        return xr.Variable(decoded.dims, np.asarray(decoded.values), decoded.attrs, encoding=decoded.encoding)
    except (ValueError, TypeError, OverflowError, OSError) as err:
        _reference(name, units, match.group(2), calendar)  # an unreadable date gets its own message
        raise TimeDecodingError(f"the {name!r} coordinate with units {units!r} (calendar {calendar!r}) cannot be "
                                f"decoded ({type(err).__name__}: its dates are out of range); {_FIX}") from None
