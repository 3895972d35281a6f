"""Time-series forecasting with a GRU: the work behind the `cgru` command.

The recipe: read one numeric column of a CSV file, fill its gaps by linear interpolation, cut it
into windows of `window` past values followed by `horizon` future values, split the windows by
time into train, validation and test, and train a Sequential GRU forecaster with early stopping.

Each window is expressed relative to its last observed value and divided by one scale (the
spread of horizon-step changes in the training part), so the model learns changes, not levels:
a series with a trend keeps producing inputs the model has seen, even past the training range.
Forecasts are scored on the original scale against the baselines a forecaster would try first:
naive (the last value repeated) and, when a season length is known, seasonal-naive (the value
one season earlier) and seasonal-naive with drift (that value plus the change over the season
before it). The report names the strongest baseline and the GRU's margin over it.
"""
import csv
import math
import os
from dataclasses import dataclass

import numpy as np

from . import callbacks, layers, optimizers
from .models import Sequential, load_model

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
DEMO_CSV = os.path.join(DATA_DIR, "co2_weekly_mauna_loa.csv")

_MISSING = {"", "na", "nan", "null", "none", "?", "-"}


class ForecastError(ValueError):
    """A problem with the user's data or settings, said in one line."""


# ---- data -----------------------------------------------------------------------------------

def read_series(path, column, time_column=None):
    """(times or None, values) from a CSV file with a header row; missing values become NaN."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ForecastError(f"{path} is empty") from None
            rows = list(reader)
    except FileNotFoundError:
        raise ForecastError(f"cannot read {path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ForecastError(f"cannot read {path}: {e}") from None
    for name in [column] + ([time_column] if time_column else []):
        if name not in header:
            raise ForecastError(f"{path} has no column {name!r}; its columns are "
                                f"{', '.join(repr(h) for h in header)}")
    col = header.index(column)
    values = np.empty(len(rows))
    for i, row in enumerate(rows):
        cell = row[col].strip() if col < len(row) else ""
        if cell.lower() in _MISSING:
            values[i] = np.nan
            continue
        try:
            values[i] = float(cell)
        except ValueError:
            raise ForecastError(f"{path}, line {i + 2}: column {column!r} holds {cell!r}, not a "
                                f"number") from None
    if np.isinf(values).any():
        raise ForecastError(f"{path}: column {column!r} holds infinite values")
    times = None
    if time_column:
        t = header.index(time_column)
        times = [row[t].strip() if t < len(row) else "" for row in rows]
    return times, values


def fill_gaps(values):
    """Linear interpolation across missing values; the ends take the nearest observation."""
    values = np.asarray(values, dtype=np.float64)
    known = np.isfinite(values)
    if not known.any():
        raise ForecastError("the series has no values at all")
    index = np.arange(len(values))
    return np.interp(index, index[known], values[known])


def make_windows(series, window, horizon):
    """Inputs (N, window) and targets (N, horizon) from every position of the series; the n-th
    window's inputs end at series index window - 1 + n."""
    n = len(series) - window - horizon + 1
    if n < 1:
        raise ForecastError(f"the series has {len(series)} values; a window of {window} plus a "
                            f"horizon of {horizon} needs at least {window + horizon}")
    view = np.lib.stride_tricks.sliding_window_view(series, window + horizon)[:n]
    return view[:, :window], view[:, window:]


@dataclass
class Split:
    """Window indices of each part; a window belongs to the part where its last target lies."""
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_by_time(n_values, window, horizon, validation=0.15, test=0.15):
    n_windows = n_values - window - horizon + 1
    last_target = np.arange(n_windows) + window + horizon - 1
    test_start = int(round(n_values * (1 - test)))
    val_start = int(round(n_values * (1 - test - validation)))
    parts = Split(np.flatnonzero(last_target < val_start),
                  np.flatnonzero((last_target >= val_start) & (last_target < test_start)),
                  np.flatnonzero(last_target >= test_start))
    for name in ("train", "validation", "test"):
        if len(getattr(parts, name)) < 1:
            raise ForecastError(f"the series ({n_values} values) is too short for a {name} part "
                                f"with window {window} and horizon {horizon}")
    return parts


class Scaler:
    """Windows relative to their last input value, divided by one training-set scale."""

    def __init__(self, scale):
        self.scale = float(scale)

    @classmethod
    def fit(cls, inputs, targets):
        spread = np.std(targets[:, -1] - inputs[:, -1])
        return cls(spread if spread > 0 else 1.0)

    def inputs(self, inputs):
        """(N, window) -> (N, window, 1) model inputs."""
        return ((inputs - inputs[:, -1:]) / self.scale)[:, :, None].astype(np.float32)

    def targets(self, inputs, targets):
        return ((targets - inputs[:, -1:]) / self.scale).astype(np.float32)

    def forecasts(self, inputs, outputs):
        return inputs[:, -1:] + outputs.astype(np.float64) * self.scale


def seasonal_naive(series, ends, horizon, season):
    """For windows ending at `ends`: the value one season (or whole seasons) before each target.

    With t a window's last index and k = ceil(h / season) the whole seasons that reach back from
    target t + h to an observed value, the forecast is y[t + h - k * season]."""
    return series[_season_back(ends, horizon, season, 1)]


def seasonal_naive_drift(series, ends, horizon, season):
    """Seasonal-naive with drift: the value one season ago plus the change over the season
    before it, y[t + h - s] + (y[t + h - s] - y[t + h - 2s]) for h <= s (s the season).

    In general, with k = ceil(h / s) whole seasons back to an observed value b = t + h - k s,
    the forecast is y[b] + k (y[b] - y[b - s]): the change of the last observed season goes on
    for each season ahead. Needs two seasons before each window's end (t + 1 >= 2 s)."""
    base = series[_season_back(ends, horizon, season, 1)]
    before = series[_season_back(ends, horizon, season, 2)]
    seasons = np.ceil(np.arange(1, horizon + 1) / season)
    return base + seasons * (base - before)


def _season_back(ends, horizon, season, extra):
    """Indices t + h - (k + extra - 1) s for every end t (rows) and step h (columns), with
    k = ceil(h / s)."""
    steps = np.arange(1, horizon + 1)
    back = season * (np.ceil(steps / season).astype(int) + extra - 1)
    index = ends[:, None] + steps[None, :] - back[None, :]
    if index.min() < 0:
        raise ForecastError(f"season {season} reaches back before the series starts")
    return index


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae(a, b):
    return float(np.mean(np.abs(a - b)))


# ---- training -------------------------------------------------------------------------------

@dataclass
class Settings:
    window: int = 104
    horizon: int = 13
    season: int = None
    units: int = 128
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 0.003
    patience: int = 10
    seed: int = 0


def build_model(settings):
    """GRU(units, return_sequences=True) -> GRU(units // 2) -> Dense(horizon), Adam on MSE."""
    model = Sequential([
        layers.Input((settings.window, 1)),
        layers.GRU(settings.units, return_sequences=True),
        layers.GRU(max(1, settings.units // 2)),
        layers.Dense(settings.horizon),
    ], seed=settings.seed)
    model.compile(optimizers.Adam(settings.learning_rate, global_clipnorm=1.0), "mse")
    return model


def train_forecaster(series, settings, verbose=1):
    """Train on a gap-free series; returns (model, report) with test scores and baselines."""
    s = settings
    inputs, targets = make_windows(series, s.window, s.horizon)
    parts = split_by_time(len(series), s.window, s.horizon)
    scaler = Scaler.fit(inputs[parts.train], targets[parts.train])
    x, y = scaler.inputs(inputs), scaler.targets(inputs, targets)
    model = build_model(s)
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=s.patience,
                                      restore_best_weights=True)
    history = model.fit(x[parts.train], y[parts.train], epochs=s.epochs,
                        batch_size=s.batch_size, callbacks=[stopper], verbose=verbose,
                        validation_data=(x[parts.validation], y[parts.validation]))
    test = parts.test
    forecast = scaler.forecasts(inputs[test], model.predict(x[test], batch_size=256))
    truth = targets[test]
    ends = test + s.window - 1
    report = {
        "epochs_run": len(history.epoch), "best_epoch": (stopper.best_epoch or 0) + 1,
        "windows": {"train": len(parts.train), "validation": len(parts.validation),
                    "test": len(test)},
        "test_rmse": rmse(forecast, truth), "test_mae": mae(forecast, truth),
        "test_ends": ends, "forecast": forecast, "truth": truth,
        "baselines": baselines(series, ends, truth, s.horizon, s.season),
    }
    report["strongest"] = min(report["baselines"],
                              key=lambda name: report["baselines"][name]["rmse"])
    metadata = {"kind": "cgru.forecast", "window": s.window, "horizon": s.horizon,
                "season": s.season, "scale": scaler.scale}
    return model, report, metadata


def baselines(series, ends, truth, horizon, season=None):
    """{name: {'forecast', 'rmse', 'mae'}} of the baselines for windows ending at `ends`:
    naive, and with a season seasonal-naive and seasonal-naive with drift (the latter only
    where two seasons of history precede every window's end)."""
    found = {"naive (last value)": np.repeat(series[ends][:, None], horizon, axis=1)}
    if season:
        found["seasonal-naive"] = seasonal_naive(series, ends, horizon, season)
        if 2 * season <= ends.min() + 1:
            found["seasonal-naive + drift"] = seasonal_naive_drift(series, ends, horizon, season)
    return {name: {"forecast": f, "rmse": rmse(f, truth), "mae": mae(f, truth)}
            for name, f in found.items()}


def forecast_next(model, series):
    """The next `horizon` values after the end of a gap-free series, from a model that
    load_forecaster returned."""
    meta = model.metadata
    window = meta["window"]
    if len(series) < window:
        raise ForecastError(f"the model reads windows of {window} values; the series has "
                            f"{len(series)}")
    scaler = Scaler(meta["scale"])
    last = series[None, -window:]
    return scaler.forecasts(last, model.predict(scaler.inputs(last)))[0]


def forecast_figure(report, settings, title, times=None):
    """The test period as a matplotlib figure: the truth `horizon` steps after each test
    window's end, the GRU's forecasts for those steps and the strongest baseline's, each
    labelled with its RMSE over the plotted points (not the table's RMSE over all horizons);
    x labelled with `times` when given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = settings.horizon
    at = report["test_ends"] + h
    truth = report["truth"][:, -1]
    strongest = report["strongest"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(at, truth, color="black", lw=1.2, label="truth")
    for name, values, style in [
            ("GRU", report["forecast"][:, -1], dict(color="tab:blue", lw=1.2)),
            (f"{strongest}, the strongest baseline",
             report["baselines"][strongest]["forecast"][:, -1],
             dict(color="tab:orange", lw=1, alpha=0.8))]:
        ax.plot(at, values, label=f"{name} (RMSE {rmse(values, truth):.3f} at {h} "
                                  f"step{'s' if h > 1 else ''})", **style)
    if times is not None:
        ticks = np.linspace(at[0], at[-1], 6).round().astype(int)
        ax.set_xticks(ticks, [times[i] for i in ticks])
    else:
        ax.set_xlabel("time step")
    ax.set_title(f"{title}: forecasts {h} step{'s' if h > 1 else ''} ahead")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_forecast(path, report, settings, title, times=None):
    """Write forecast_figure as a PNG at `path` (atomically). False without matplotlib."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = forecast_figure(report, settings, title, times)
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def load_forecaster(path):
    """A model written by `cgru train` or `cgru demo`, its forecasting settings checked: window,
    horizon (integers >= 1, matching the model's input and output), season (null or an integer
    >= 1), scale (a finite number > 0), column and time_column (null or text)."""
    try:
        model = load_model(path)
    except FileNotFoundError:
        raise ForecastError(f"cannot read {path}: no such file") from None
    except ValueError as e:
        raise ForecastError(str(e)) from None
    meta = model.metadata
    if meta.get("kind") != "cgru.forecast":
        raise ForecastError(f"{path} was not written by `cgru train` or `cgru demo` (it has no "
                            f"forecasting settings)")
    checks = {
        "window": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
        "horizon": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
        "season": ("null or an integer >= 1", lambda v: v is None or (_is_int(v) and v >= 1)),
        "scale": ("a finite number > 0", lambda v: isinstance(v, (int, float))
                  and not isinstance(v, bool) and math.isfinite(v) and v > 0),
        "column": ("null or text", lambda v: v is None or isinstance(v, str)),
        "time_column": ("null or text", lambda v: v is None or isinstance(v, str)),
    }
    for key, (expected, check) in checks.items():
        if key not in meta:
            raise ForecastError(f"{path}: its forecasting settings lack '{key}'")
        if not check(meta[key]):
            raise ForecastError(f"{path}: forecasting setting '{key}' must be {expected}, got "
                                f"{meta[key]!r:.40}")
    shape = tuple(model.input_shape)
    for layer in model.layers:
        shape = layer.compute_output_shape(shape)
    if tuple(model.input_shape) != (meta["window"], 1) or shape != (meta["horizon"],):
        raise ForecastError(f"{path}: the model maps {tuple(model.input_shape)} to {shape}; its "
                            f"forecasting settings need ({meta['window']}, 1) to "
                            f"({meta['horizon']},)")
    return model


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def require_rows(series, path):
    if len(series) == 0:
        raise ForecastError(f"{path} has no data rows")
