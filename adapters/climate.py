"""xarray fields <-> the core's ``Prepared`` (samples = time steps).

On the way in every variable is transposed to (time, *grid dims), flattened
in C order over the grid dims (regular lat/lon in any order and direction,
levels, stations, regions), features that are NaN at every time step (land)
are dropped, the rest are standardised per feature, and scattered NaNs become
the loss mask (never filled). cos(latitude) area weights, normalised to mean
1 over the kept features, scale each feature's log-likelihood.

On the way out :meth:`ClimateAdapter.to_field` puts any (rows x features)
matrix back on the grid with the input's dims, coords and attributes and the
dropped features restored as NaN. The adapter saves itself as ``adapter.nc``
(the grid, per-feature mean/std/weight) and loads without pickles.

>>> import numpy as np, pandas as pd, xarray as xr
>>> time = pd.date_range("2000-01-01", periods=24, freq="MS")
>>> da = xr.DataArray(np.random.default_rng(0).normal(size=(24, 3, 4)), dims=("time", "lat", "lon"),
...                   coords={"time": time, "lat": [10.0, 0.0, -10.0], "lon": [0.0, 90.0, 180.0, 270.0]}, name="t")
>>> adapter = ClimateAdapter.from_data(da)
>>> prepared = adapter.prepare(da)
>>> prepared.X.shape
(24, 12)
>>> back = adapter.to_field(prepared.X, adapter.sample_coord(da), units="original")
>>> bool(np.allclose(back["t"], da))
True
"""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from sciencevae.data import Prepared, as_prepared
from sciencevae.io import atomic_path
from sciencevae.streaming import Streamed

from .climate_time import TimeDecodingError, decode_time_coords

__all__ = ["ClimateAdapter", "FieldRows", "open_field", "decode_time_coords", "ADAPTER_NAME"]

ADAPTER_NAME = "adapter.nc"
LAT_NAMES = ("lat", "latitude", "nav_lat", "y_lat")


def open_field(inputs: str | Path | Sequence[str | Path] | xr.Dataset | xr.DataArray, var=None) -> xr.Dataset:
    """Open netCDF/zarr path(s) (several files combine by coordinates) or wrap a DataArray.

    Nothing is loaded: files open lazily with dask chunks over time. Time
    coordinates are decoded by :func:`~sciencevae.adapters.climate_time.decode_time_coords`
    (files: each one before they combine; in-memory data: numeric times that
    carry CF units), so every CF calendar and ``months since`` / ``years since``
    / CDO absolute times arrive as dates.
    """
    if isinstance(inputs, xr.DataArray):
        name = inputs.name if inputs.name is not None else (var if isinstance(var, str) else "field")
        return decode_time_coords(inputs.to_dataset(name=name))
    if isinstance(inputs, xr.Dataset):
        return decode_time_coords(inputs)
    expanded = _expand_paths(inputs)
    try:
        if len(expanded) == 1 and expanded[0].rstrip("/").endswith(".zarr"):
            return decode_time_coords(xr.open_zarr(expanded[0], decode_times=False))
        if len(expanded) == 1:
            return decode_time_coords(xr.open_dataset(expanded[0], chunks={}, decode_times=False))
        return xr.open_mfdataset(expanded, combine="by_coords", chunks={}, decode_times=False,
                                 preprocess=decode_time_coords)
    except (OSError, ValueError) as err:
        if isinstance(err, TimeDecodingError):
            raise TimeDecodingError(f"{', '.join(Path(p).name for p in expanded)}: {err}") from None
        raise ValueError(f"could not open {', '.join(expanded)} as netCDF/zarr: {err}") from None


def _expand_paths(inputs: str | Path | Sequence[str | Path]) -> list[str]:
    """Paths and glob patterns -> existing paths (a pattern that matches nothing is an error)."""
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    expanded: list[str] = []
    for path in paths:
        matches = sorted(glob.glob(str(path))) if any(c in str(path) for c in "*?[") else [str(path)]
        if not matches:
            raise FileNotFoundError(f"no file matches {path}")
        expanded += matches
    for path in expanded:
        if not Path(path).exists():
            raise FileNotFoundError(f"input {path} does not exist")
    return expanded


def _variables(ds: xr.Dataset, var) -> list[str]:
    names = [var] if isinstance(var, str) else list(var) if var is not None else None
    if names is None:
        names = [n for n in ds.data_vars if ds[n].ndim >= 2]
        if len(names) != 1:
            raise ValueError(f"the dataset has variables {list(ds.data_vars)}; choose one or more with --var NAME (var=... in Python)")
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise ValueError(f"variable {missing[0]!r} is not in the data; it has {sorted(map(str, ds.data_vars))}")
    return names


def _check_samples(da: xr.DataArray, sample_dim: str) -> None:
    if sample_dim not in da.dims:
        raise ValueError(
            f"variable {da.name!r} has no {sample_dim!r} dimension (dims {da.dims}); name the dimension that "
            f"indexes samples {sample_dim!r} (ds.rename({{'t': {sample_dim!r}}}) on a copy, or `ncrename -d t,"
            f"{sample_dim}` for a file), or pass sample_dim= in Python"
        )
    if da.ndim < 2:
        raise ValueError(f"variable {da.name!r} has only the {sample_dim!r} dimension; nothing to stack as features")
    index = da.indexes.get(sample_dim)
    if index is not None:
        if index.isna().any():
            raise ValueError(f"{sample_dim!r} has {int(index.isna().sum())} missing value(s); drop those steps first, "
                             f"e.g. data.isel({sample_dim}=data[{sample_dim!r}].notnull())")
        if index.has_duplicates:
            raise ValueError(f"{sample_dim!r} has duplicated values (e.g. {index[index.duplicated()][0]}); drop them")
        if not index.is_monotonic_increasing:
            raise ValueError(f"{sample_dim!r} is not sorted; sort it first: data.sortby({sample_dim!r})")


def _lat_coord(grid: xr.DataArray) -> xr.DataArray | None:
    for name in grid.coords:
        units = str(grid[name].attrs.get("units", "")).lower()
        if name in LAT_NAMES or units in ("degrees_north", "degree_north", "degrees_n"):
            return grid[name]
    return None


@dataclass
class _VariableState:
    name: str
    grid: xr.DataArray  # one time slice: dims, coords, attrs of the grid
    keep: np.ndarray  # (n_grid,) bool
    mean: np.ndarray  # (n_kept,)
    std: np.ndarray
    weight: np.ndarray


class ClimateAdapter:
    """Stack a field's grid into features and map results back onto it."""

    def __init__(self, sample_dim: str, states: list[_VariableState], standardize: bool, area_weighting: bool,
                 sample_attrs: dict | None = None):
        self.sample_dim = sample_dim
        self.states = states
        self.standardize = standardize
        self.area_weighting = area_weighting
        self.sample_attrs = dict(sample_attrs or {})

    @property
    def variables(self) -> list[str]:
        return [s.name for s in self.states]

    @property
    def n_features(self) -> int:
        return int(sum(s.keep.sum() for s in self.states))

    @classmethod
    def from_data(cls, data, var=None, sample_dim: str = "time", standardize: bool = True,
                  area_weighting: bool = True) -> "ClimateAdapter":
        """Learn the grid, land mask, scaling and weights from a field."""
        ds = open_field(data, var)
        states = [cls._state(ds[name], sample_dim, standardize, area_weighting) for name in _variables(ds, var)]
        weights = np.concatenate([s.weight for s in states])
        for s in states:  # mean weight 1 over all kept features
            s.weight = s.weight / weights.mean()
        return cls(sample_dim, states, standardize, area_weighting, dict(ds[sample_dim].attrs) if sample_dim in ds else {})

    @staticmethod
    def _state(da: xr.DataArray, sample_dim: str, standardize: bool, area_weighting: bool) -> _VariableState:
        _check_samples(da, sample_dim)
        grid_dims = [d for d in da.dims if d != sample_dim]
        keep, mean, std = _grid_statistics(da, sample_dim, grid_dims)  # streamed through dask when chunked
        if not keep.any():
            raise ValueError(f"variable {da.name!r} is NaN everywhere; nothing to learn from")
        mean, std = mean[keep], std[keep]
        if not standardize:
            mean, std = np.zeros(keep.sum()), np.ones(keep.sum())
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        grid = da.isel({sample_dim: 0}, drop=True).transpose(*grid_dims)
        grid = xr.zeros_like(grid, dtype=np.float32)
        weight = np.ones(int(keep.sum()))
        lat = _lat_coord(grid)
        if area_weighting and lat is not None:
            weight = np.clip(np.cos(np.deg2rad(lat.broadcast_like(grid).transpose(*grid.dims).values.ravel()[keep])), 0.0, None)
            weight = np.maximum(weight, 1e-3)
        return _VariableState(str(da.name), grid, keep, mean, std, weight)

    def sample_coord(self, data) -> xr.DataArray:
        """The sample coordinate (e.g. time) of a field, as stored in it."""
        ds = open_field(data, self.variables[0] if len(self.variables) == 1 else self.variables)
        return ds[self.sample_dim]

    def prepare(self, data) -> Prepared:
        """Field -> standardised (time, features) matrix with a NaN mask and area weights."""
        ds = self.open_checked(data)
        X = self.standardized_rows(ds, 0, int(ds.sizes[self.sample_dim]))
        weights = np.concatenate([s.weight for s in self.states])
        names = np.asarray(ds[self.sample_dim].values).astype(str) if self.sample_dim in ds.coords else None
        return as_prepared(Prepared(X=X, obs_names=names, feature_weights=weights))

    def open_checked(self, data) -> xr.Dataset:
        """Open ``data`` lazily and check it has this adapter's variables on its grid."""
        ds = open_field(data, self.variables[0] if len(self.variables) == 1 else self.variables)
        for state in self.states:
            if state.name not in ds.data_vars:
                raise ValueError(f"variable {state.name!r} is not in the data; it has {sorted(map(str, ds.data_vars))}")
            _check_samples(ds[state.name], self.sample_dim)
            self._check_grid(ds[state.name], state)
        return ds

    def stream(self, data, chunk_rows: int = 256, buffer_chunks: int = 4) -> Streamed:
        """The field as a :class:`~sciencevae.streaming.Streamed`: time chunks read through dask on demand.

        For fields larger than memory: ``BetaVAE.fit`` / ``encode`` /
        ``evaluate`` read ``buffer_chunks`` chunks of ``chunk_rows`` time steps
        at a time (standardised, land dropped, NaN masked, area-weighted like
        :meth:`prepare`). Open the data lazily (``open_field`` on zarr/netCDF).
        """
        ds = self.open_checked(data)
        weights = np.concatenate([s.weight for s in self.states])
        return Streamed(FieldRows(self, ds), chunk_rows=chunk_rows, buffer_chunks=buffer_chunks,
                        feature_weights=weights)

    def standardized_rows(self, ds: xr.Dataset, start: int, stop: int) -> np.ndarray:
        """Time steps ``start:stop`` as the standardised (rows, features) float32 matrix (NaN = missing)."""
        blocks = []
        for state in self.states:
            da = ds[state.name].isel({self.sample_dim: slice(start, stop)})
            values = _stacked_values(da, self.sample_dim, list(state.grid.dims))[:, state.keep]
            blocks.append((values - state.mean) / state.std)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _check_grid(self, da: xr.DataArray, state: _VariableState) -> None:
        grid_dims = [d for d in da.dims if d != self.sample_dim]
        if sorted(grid_dims) != sorted(state.grid.dims):
            raise ValueError(f"variable {state.name!r} has grid dims {grid_dims}; the model was fitted on {list(state.grid.dims)}")
        for dim in state.grid.dims:
            if dim in state.grid.coords and not np.array_equal(np.asarray(da[dim].values), np.asarray(state.grid[dim].values)):
                raise ValueError(
                    f"the {dim!r} coordinate of {state.name!r} differs from the fitted grid; "
                    "regrid the new data to the model's grid first"
                )
            if da.sizes[dim] != state.grid.sizes[dim]:
                raise ValueError(f"{dim!r} has {da.sizes[dim]} points; the fitted grid has {state.grid.sizes[dim]}")

    def to_field(self, matrix: np.ndarray, samples: xr.DataArray | Sequence | None = None, dim: str | None = None,
                 units: str = "original") -> xr.Dataset:
        """(rows, n_features) -> Dataset on the grid, NaN where features were dropped.

        ``units``: ``"original"`` (x * std + mean: fields, reconstructions),
        ``"anomaly"`` (x * std: components, differences, sensitivities) or
        ``"standardized"`` (as given). ``samples`` labels the rows: a
        coordinate DataArray (e.g. the input's time), a sequence, or None.
        """
        if units not in ("original", "anomaly", "standardized"):
            raise ValueError(f"units must be 'original', 'anomaly' or 'standardized', got {units!r}")
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(f"expected a (rows, {self.n_features}) matrix, got {matrix.shape}")
        dim = dim or (samples.name if isinstance(samples, xr.DataArray) else self.sample_dim)
        out, start = {}, 0
        for state in self.states:
            n = int(state.keep.sum())
            block = matrix[:, start:start + n]
            start += n
            if units != "standardized":
                block = block * state.std
            if units == "original":
                block = block + state.mean
            full = np.full((len(matrix), state.keep.size), np.nan)
            full[:, state.keep] = block
            values = full.reshape(len(matrix), *state.grid.shape).astype(np.float32)
            da = xr.DataArray(values, dims=(dim, *state.grid.dims), coords=state.grid.coords,
                              attrs=_carried_attrs(state.grid.attrs, units))
            out[state.name] = da
        ds = xr.Dataset(out)
        if samples is not None:
            ds = ds.assign_coords({dim: samples})
        return ds

    def grid_weights(self) -> xr.Dataset:
        """The area weights on the grid (NaN on dropped features)."""
        return self._on_grid("weight")

    def grid_means(self) -> xr.Dataset:
        """The time mean of each variable on the grid in its units (NaN on dropped features): the centre
        of the standardisation, computed over every observed time step."""
        return self._on_grid("mean")

    def _on_grid(self, field: str) -> xr.Dataset:
        """``mean``, ``std`` or ``weight`` per feature on the grid, with attributes saying which."""
        out = {}
        for state in self.states:
            full = np.full(state.keep.size, np.nan)
            full[state.keep] = getattr(state, field)
            units = state.grid.attrs.get("units")
            attrs = {"mean": {"long_name": f"time mean of {state.name} (the standardisation's centre)"},
                     "std": {"long_name": f"standard deviation of {state.name} over time (the standardisation's scale)"},
                     "weight": {"long_name": "area weight of the log-likelihood (cos latitude, mean 1)", "units": "1"},
                     }[field]
            if field != "weight" and units is not None:
                attrs["units"] = units
            out[state.name] = xr.DataArray(full.reshape(state.grid.shape), dims=state.grid.dims,
                                           coords=state.grid.coords, attrs=attrs)
        return xr.Dataset(out)

    def save(self, path: str | Path) -> Path:
        """Write the adapter as netCDF (grid coords + mean/std/weight per variable)."""
        parts = {}
        for field in ("mean", "std", "weight"):
            for name, da in self._on_grid(field).items():
                parts[f"{name}__{field}"] = da
        ds = xr.Dataset(parts)
        ds.attrs.update({
            "sciencevae_adapter": "climate",
            "sample_dim": self.sample_dim,
            "variables": json.dumps(self.variables),
            "standardize": int(self.standardize),
            "area_weighting": int(self.area_weighting),
            "variable_attrs": json.dumps({s.name: _jsonable(s.grid.attrs) for s in self.states}),
            "sample_attrs": json.dumps(_jsonable(self.sample_attrs)),
        })
        path = Path(path)
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ClimateAdapter":
        """Read an adapter written by :meth:`save`."""
        with xr.open_dataset(path) as ds:
            ds = ds.load()
        if ds.attrs.get("sciencevae_adapter") != "climate":
            raise ValueError(f"{path} is not a sciencevae climate adapter")
        attrs = json.loads(ds.attrs["variable_attrs"])
        states = []
        for name in json.loads(ds.attrs["variables"]):
            mean = ds[f"{name}__mean"]
            keep = np.isfinite(mean.values.ravel())
            grid = xr.zeros_like(mean, dtype=np.float32)
            grid.attrs = attrs.get(name, {})
            states.append(_VariableState(
                name, grid, keep, mean.values.ravel()[keep], ds[f"{name}__std"].values.ravel()[keep],
                ds[f"{name}__weight"].values.ravel()[keep],
            ))
        return cls(ds.attrs["sample_dim"], states, bool(ds.attrs["standardize"]), bool(ds.attrs["area_weighting"]),
                   json.loads(ds.attrs.get("sample_attrs", "{}")))


#: What a field in the data's units may keep of the input variable's attributes (never its
#: actual_range, valid_range, statistic, scale or fill settings: they describe the input's values).
CARRIED_ATTRS = ("units", "long_name", "standard_name")


def _carried_attrs(attrs: dict, scale: str) -> dict:
    """The input variable's attributes that still describe a field put back on the grid in ``scale``
    (``"original"``: values in the data's units; ``"anomaly"``: differences, units only;
    ``"standardized"``: dimensionless)."""
    if scale == "standardized":
        return {"units": "1"}
    keep = CARRIED_ATTRS if scale == "original" else ("units",)
    return {k: attrs[k] for k in keep if k in attrs}


def _grid_statistics(da: xr.DataArray, sample_dim: str, grid_dims: list[str]) -> tuple[np.ndarray, ...]:
    """Per grid point: observed at least once, mean and std over samples (NaN-skipping, float64).

    Reductions over ``sample_dim``: a dask-backed field is read chunk by chunk,
    never whole. Land (NaN at every step) has no mean: numpy's 0/0 warnings
    for it are expected and silenced.
    """
    values = da.astype(np.float64).transpose(sample_dim, *grid_dims)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(invalid value|Mean of empty|Degrees of freedom)", RuntimeWarning)
        observed = values.notnull().any(sample_dim)
        mean = values.mean(sample_dim, skipna=True)
        std = values.std(sample_dim, skipna=True)
        observed, mean, std = xr.align(observed, mean, std)
        if hasattr(observed.data, "dask"):
            import dask

            observed, mean, std = dask.compute(observed, mean, std)
    return tuple(np.asarray(v.values).ravel() for v in (observed, mean, std))


def _stacked_values(da: xr.DataArray, sample_dim: str, grid_dims: list[str]) -> np.ndarray:
    """(time, n_grid) float64 values in C order over ``grid_dims`` (computes dask)."""
    values = np.asarray(da.transpose(sample_dim, *grid_dims).values, dtype=np.float64)
    return values.reshape(values.shape[0], -1)


class FieldRows:
    """Row reader over a (lazily opened) field for :class:`~sciencevae.streaming.Streamed`."""

    def __init__(self, adapter: ClimateAdapter, ds: xr.Dataset):
        self.adapter, self.ds = adapter, ds
        self.n_obs = int(ds.sizes[adapter.sample_dim])
        self.n_features = adapter.n_features

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.adapter.standardized_rows(self.ds, start, stop)


def _jsonable(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (str, int, float, bool, list)):
            out[key] = value
    return out
