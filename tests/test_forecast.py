"""The forecasting recipe behind the `cgru` command: baselines computed by hand, the plot's labels
against what it draws, and the checks on a forecaster's settings."""
import numpy as np
import pytest

from cgru import forecast

# index:           0  1  2  3  4  5  6   7  8
SERIES = np.array([1, 4, 2, 5, 9, 3, 6, 10, 4], dtype=float)


def test_seasonal_naive_by_hand():
    # season 3, window ending at t = 5: y[t + h - s ceil(h / s)]
    got = forecast.seasonal_naive(SERIES, np.array([5]), horizon=4, season=3)
    np.testing.assert_array_equal(got, [[SERIES[3], SERIES[4], SERIES[5], SERIES[3]]])


def test_seasonal_naive_with_drift_by_hand():
    # season 3, window ending at t = 5:
    #   h = 1: y[3] + (y[3] - y[0]) = 5 + 4     = 9
    #   h = 2: y[4] + (y[4] - y[1]) = 9 + 5     = 14
    #   h = 3: y[5] + (y[5] - y[2]) = 3 + 1     = 4
    #   h = 4: two seasons ahead of y[3]: 5 + 2 * 4 = 13
    # and for the window ending at t = 6 (h = 1..3): y[4] + 5, y[5] + 1, y[6] + 1
    got = forecast.seasonal_naive_drift(SERIES, np.array([5]), horizon=4, season=3)
    np.testing.assert_array_equal(got, [[9, 14, 4, 13]])
    got = forecast.seasonal_naive_drift(SERIES, np.array([5, 6]), horizon=3, season=3)
    np.testing.assert_array_equal(got, [[9, 14, 4], [14, 4, 7]])


def test_seasonal_naive_with_drift_is_exact_on_a_line_plus_a_season():
    t = np.arange(60, dtype=float)
    series = 0.3 * t + np.tile([0.0, 2.0, -1.0, 5.0], 15)
    ends = np.array([20, 33, 47])
    got = forecast.seasonal_naive_drift(series, ends, horizon=9, season=4)
    np.testing.assert_allclose(got, series[ends[:, None] + np.arange(1, 10)])


def test_baselines_that_reach_before_the_series_start():
    with pytest.raises(forecast.ForecastError, match="season 7 reaches back before"):
        forecast.seasonal_naive_drift(SERIES, np.array([5]), horizon=2, season=7)
    truth = np.zeros((1, 2))
    found = forecast.baselines(SERIES, np.array([4]), truth, horizon=2, season=3)
    assert list(found) == ["naive (last value)", "seasonal-naive"]  # drift needs t + 1 >= 6
    found = forecast.baselines(SERIES, np.array([5]), truth, horizon=2, season=3)
    assert list(found) == ["naive (last value)", "seasonal-naive", "seasonal-naive + drift"]
    np.testing.assert_array_equal(found["naive (last value)"]["forecast"], [[3, 3]])
    assert found["seasonal-naive + drift"]["mae"] == (9 + 14) / 2


def fake_report(h=3):
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((20, h))
    report = {"test_ends": np.arange(10, 30), "truth": truth,
              "forecast": truth + 0.1 * rng.standard_normal((20, h)),
              "baselines": {"naive (last value)": {"forecast": truth + 1.0, "rmse": 1.0},
                            "seasonal-naive": {"forecast": truth + 0.5, "rmse": 0.5}},
              "strongest": "seasonal-naive"}
    return report


def test_the_plot_draws_what_its_legend_says():
    pytest.importorskip("matplotlib")
    report = fake_report()
    settings = forecast.Settings(horizon=3)
    fig = forecast.forecast_figure(report, settings, "demo")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    truth = report["truth"][:, -1]
    gru_rmse = forecast.rmse(report["forecast"][:, -1], truth)
    assert list(lines) == ["truth", f"GRU (RMSE {gru_rmse:.3f} at 3 steps)",
                           "seasonal-naive, the strongest baseline (RMSE 0.500 at 3 steps)"]
    drawn = [line.get_ydata() for line in lines.values()]
    np.testing.assert_array_equal(drawn[0], truth)
    np.testing.assert_array_equal(drawn[1], report["forecast"][:, -1])
    np.testing.assert_array_equal(drawn[2],
                                  report["baselines"]["seasonal-naive"]["forecast"][:, -1])
    for line in lines.values():  # each value is drawn at the step it forecasts
        np.testing.assert_array_equal(line.get_xdata(), report["test_ends"] + 3)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    assert ax.get_title() == "demo: forecasts 3 steps ahead"


@pytest.fixture(scope="module")
def forecaster_file(tmp_path_factory):
    settings = forecast.Settings(window=6, horizon=2, units=4, epochs=1)
    model = forecast.build_model(settings)
    model.build((None, 6, 1))
    path = tmp_path_factory.mktemp("forecaster") / "f.npz"
    meta = {"kind": "cgru.forecast", "window": 6, "horizon": 2, "season": None, "scale": 1.5,
            "column": "value", "time_column": None}
    model.save(path, metadata=meta)
    return path, model, meta


def with_metadata(tmp_path, forecaster_file, change):
    path, model, meta = forecaster_file
    meta = dict(meta)
    change(meta)
    target = tmp_path / "changed.npz"
    model.save(target, metadata=meta)
    return target


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("kind"), "was not written by `cgru train` or `cgru demo`"),
    (lambda m: m.pop("scale"), "its forecasting settings lack 'scale'"),
    (lambda m: m.pop("window"), "its forecasting settings lack 'window'"),
    (lambda m: m.update(scale=0), "'scale' must be a finite number > 0, got 0"),
    (lambda m: m.update(scale=-2.0), "'scale' must be a finite number > 0, got -2.0"),
    (lambda m: m.update(scale="1"), "'scale' must be a finite number > 0, got '1'"),
    (lambda m: m.update(window="6"), "'window' must be an integer >= 1, got '6'"),
    (lambda m: m.update(window=6.0), "'window' must be an integer >= 1, got 6.0"),
    (lambda m: m.update(horizon=True), "'horizon' must be an integer >= 1, got True"),
    (lambda m: m.update(season=0), "'season' must be null or an integer >= 1"),
    (lambda m: m.update(column=5), "'column' must be null or text"),
    (lambda m: m.update(window=7), "the model maps (6, 1) to (2,); its forecasting settings "
                                   "need (7, 1) to (2,)"),
    (lambda m: m.update(horizon=3), "need (6, 1) to (3,)"),
])
def test_a_forecaster_with_odd_settings_is_refused_at_load(tmp_path, forecaster_file, change,
                                                           message):
    path = with_metadata(tmp_path, forecaster_file, change)
    with pytest.raises(forecast.ForecastError) as refused:
        forecast.load_forecaster(str(path))
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_a_valid_forecaster_loads_and_forecasts_its_horizon(forecaster_file):
    path, model, meta = forecaster_file
    loaded = forecast.load_forecaster(str(path))
    assert loaded.metadata == meta
    series = np.linspace(0, 1, 10)
    future = forecast.forecast_next(loaded, series)
    x = ((series[-6:] - series[-1]) / 1.5).astype(np.float32)[None, :, None]
    np.testing.assert_allclose(future, series[-1] + 1.5 * model.predict(x)[0], rtol=1e-6)
