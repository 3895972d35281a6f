"""The `cgru` command end to end: demo, train, predict, info, and its error paths."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cgru
from cgru import cli, forecast

FAST = ["--epochs", "4", "--units", "16", "--quiet"]


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `cgru argv...` run in this process."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def series_csv(tmp_path):
    """A seasonal series with a trend, noise and a few empty cells."""
    rng = np.random.default_rng(0)
    t = np.arange(400)
    values = 0.02 * t + np.sin(2 * np.pi * t / 20) + 0.05 * rng.standard_normal(400)
    lines = ["day,value"] + [f"{i},{'' if i in (50, 51, 300) else f'{v:.5f}'}"
                             for i, v in zip(t, values)]
    path = tmp_path / "series.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def score_table(out):
    """{row name: (RMSE, MAE)} from the table `cgru demo` / `cgru train` print."""
    lines = out.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("test, all horizons")))
    table = {}
    for line in lines[first + 1:]:
        if line.startswith("strongest baseline"):
            break
        name, rmse, mae = line[:26].strip(), float(line[26:36]), float(line[36:46])
        table[name] = (rmse, mae)
    return table


def test_demo_compares_the_gru_with_three_baselines_and_names_the_strongest(capsys, tmp_path):
    out_dir = tmp_path / "new" / "dir"  # created when missing
    status, out, err = run(capsys, "demo", *FAST, "--output-dir", str(out_dir))
    assert status == 0, err
    assert "2284 values of 'co2'" in out and "59 gaps filled" in out
    table = score_table(out)
    baselines = ["naive (last value)", "seasonal-naive", "seasonal-naive + drift"]
    assert list(table) == ["GRU"] + baselines
    strongest = min(baselines, key=lambda name: table[name][0])
    gru, best = table["GRU"], table[strongest]
    rmse_margin = 100 * (1 - gru[0] / best[0])
    mae_margin = 100 * (1 - gru[1] / best[1])
    verdict = "beats it" if rmse_margin > 0 and mae_margin > 0 else "does NOT beat it"
    line = next(line for line in out.splitlines() if line.startswith("strongest baseline"))
    assert line.startswith(f"strongest baseline (lowest RMSE): {strongest}; the GRU {verdict}")
    assert f"RMSE {abs(rmse_margin):.1f}% " in line and f"MAE {abs(mae_margin):.1f}% " in line
    assert (out_dir / "co2_gru.npz").exists()
    try:
        import matplotlib  # noqa: F401
        assert (out_dir / "co2_forecast.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "plot skipped" in out


def test_shipped_data_keeps_its_source_note():
    note = open(forecast.DEMO_CSV.replace("co2_weekly_mauna_loa.csv", "README.md")).read()
    assert "Keeling" in note and "Public domain" in note


def test_train_then_predict_on_a_users_series(capsys, tmp_path, series_csv):
    model_path = tmp_path / "m.npz"
    status, out, err = run(capsys, "train", "--csv", str(series_csv), "--column", "value",
                           "--time-column", "day", "--window", "40", "--horizon", "5",
                           "--season", "20", *FAST, "--model", str(model_path))
    assert status == 0, err
    assert "3 gaps filled" in out and "seasonal-naive" in out and model_path.exists()
    status, out, err = run(capsys, "predict", "--model", str(model_path), "--csv",
                           str(series_csv))
    assert status == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "step,forecast" and len(lines) == 6
    values = [float(line.split(",")[1]) for line in lines[1:]]
    assert all(abs(v - 8.0) < 2.5 for v in values)  # the series ends near 0.02 * 400 = 8


def test_predict_writes_to_a_file_when_asked(capsys, tmp_path, series_csv):
    model_path = tmp_path / "m.npz"
    run(capsys, "train", "--csv", str(series_csv), "--column", "value", "--window", "30",
        "--horizon", "3", *FAST, "--model", str(model_path))
    status, out, _ = run(capsys, "predict", "--model", str(model_path), "--csv",
                         str(series_csv), "--output", str(tmp_path / "f.csv"))
    assert status == 0 and out == ""
    assert (tmp_path / "f.csv").read_text().count("\n") == 4


def test_info_reports_version_openmp_threads_blas_and_flags(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert f"cgru {cgru.__version__}" in out and "OpenMP:" in out and "threads:" in out
    assert "BLAS:" in out and f"build flags: {cgru._engine.BUILD_FLAGS}" in out


def test_the_installed_command_runs_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "cgru", "predict", "--model", "nope.npz",
                             "--csv", "nope.csv"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "cgru predict: error: cannot read nope.npz: no such file"
    helped = subprocess.run([sys.executable, "-m", "cgru", "train", "--help"],
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--time-column" in helped.stdout


@pytest.mark.parametrize("argv, status, message", [
    (["train", "--csv", "missing.csv", "--column", "x"], 1, "cannot read missing.csv"),
    (["train", "--column", "x"], 2, "the following arguments are required: --csv"),
    (["demo", "--epochs", "0"], 2, "argument --epochs: must be > 0"),
    (["demo", "--window", "ten"], 2, "argument --window: expected a int"),
    (["demo", "--output-dir", __file__], 1, "is not a directory"),
    (["fly"], 2, "invalid choice: 'fly'"),
])
def test_bad_arguments_give_one_line_and_a_non_zero_status(capsys, argv, status, message):
    code, out, err = run(capsys, *argv)
    assert code == status
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_column_lists_the_columns(capsys, series_csv):
    code, _, err = run(capsys, "train", "--csv", str(series_csv), "--column", "price")
    assert code == 1 and "no column 'price'; its columns are 'day', 'value'" in err


def test_non_numeric_cell_names_its_line(capsys, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("value\n1.0\n2.0\nlots\n")
    code, _, err = run(capsys, "train", "--csv", str(path), "--column", "value")
    assert code == 1 and "line 4" in err and "'lots'" in err


def test_series_too_short_for_the_window_is_reported(capsys, tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("value\n" + "\n".join(str(i) for i in range(50)) + "\n")
    code, _, err = run(capsys, "train", "--csv", str(path), "--column", "value")
    assert code == 1 and "needs at least 117" in err


def test_predict_refuses_damaged_and_foreign_model_files(capsys, tmp_path, series_csv):
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(capsys, "predict", "--model", str(damaged), "--csv", str(series_csv),
                       "--column", "value")
    assert code == 1 and "truncated or corrupted" in err
    plain = tmp_path / "plain.npz"
    model = cgru.Sequential([cgru.layers.Input((5, 1)), cgru.layers.GRU(2)])
    model.save(plain)
    code, _, err = run(capsys, "predict", "--model", str(plain), "--csv", str(series_csv),
                       "--column", "value")
    assert code == 1 and "not written by `cgru train`" in err


# ---- output paths are checked before training ----------------------------------------------------

@pytest.mark.parametrize("option, where, message", [
    ("--model", "missing/m.npz", "--model {path}: its directory does not exist"),
    ("--model", ".", "--model {path} is a directory"),
    ("--plot", "missing/p.png", "--plot {path}: its directory does not exist"),
])
def test_unwritable_outputs_fail_before_training(capsys, tmp_path, series_csv, option, where,
                                                 message):
    path = str(tmp_path / where)
    code, out, err = run(capsys, "train", "--csv", str(series_csv), "--column", "value",
                         option, path)
    assert code == 1 and out == ""  # not even the CSV was read
    assert err.strip() == f"cgru train: error: {message.format(path=path)}"


def test_predict_checks_its_output_path_before_loading(capsys, tmp_path, series_csv):
    path = str(tmp_path / "missing" / "f.csv")
    code, out, err = run(capsys, "predict", "--model", "nope.npz", "--csv", str(series_csv),
                         "--output", path)
    assert code == 1
    assert err.strip() == f"cgru predict: error: --output {path}: its directory does not exist"


# ---- predict on bad model files ------------------------------------------------------------------

@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    """A model file from `cgru train` and the series it was trained on."""
    folder = tmp_path_factory.mktemp("forecaster")
    t = np.arange(200)
    series = folder / "series.csv"
    series.write_text("value\n" + "\n".join(f"{np.sin(i / 5):.5f}" for i in t) + "\n")
    model = folder / "m.npz"
    status = cli.main(["train", "--csv", str(series), "--column", "value", "--window", "20",
                       "--horizon", "3", "--epochs", "1", "--units", "4", "--quiet", "--model",
                       str(model)])
    assert status == 0
    return model, series


def predict_with_metadata(capsys, tmp_path, forecaster, change):
    model_path, series = forecaster
    model = cgru.load_model(model_path)
    meta = dict(model.metadata)
    change(meta)
    changed = tmp_path / "changed.npz"
    model.save(changed, metadata=meta)
    return run(capsys, "predict", "--model", str(changed), "--csv", str(series))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("horizon"), "its forecasting settings lack 'horizon'"),
    (lambda m: m.update(scale=0), "'scale' must be a finite number > 0, got 0"),
    (lambda m: m.update(scale=-1.0), "'scale' must be a finite number > 0, got -1.0"),
    (lambda m: m.update(window=20.5), "'window' must be an integer >= 1, got 20.5"),
    (lambda m: m.update(horizon="3"), "'horizon' must be an integer >= 1, got '3'"),
    (lambda m: m.update(window=21), "its forecasting settings need (21, 1) to (3,)"),
    (lambda m: m.update(kind="other"), "was not written by `cgru train` or `cgru demo`"),
    (lambda m: m.update(column=None), "names no column; give --column"),
])
def test_predict_refuses_odd_forecasting_settings_in_one_line(capsys, tmp_path, forecaster,
                                                              change, message):
    code, out, err = predict_with_metadata(capsys, tmp_path, forecaster, change)
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_predict_refuses_a_nan_scale_in_one_line(capsys, tmp_path, forecaster):
    model_path, series = forecaster
    with np.load(model_path) as archive:
        arrays = dict(archive)
    text = str(arrays["__cgru__"]).replace('"scale": ', '"scale": NaN, "was": ')
    arrays["__cgru__"] = np.array(text)
    np.savez(tmp_path / "nan.npz", **arrays)
    code, _, err = run(capsys, "predict", "--model", str(tmp_path / "nan.npz"), "--csv",
                       str(series))
    assert code == 1 and "NaN is not a JSON number" in err and len(err.splitlines()) == 1


def test_predict_with_a_csv_without_the_column(capsys, tmp_path, forecaster):
    model_path, _ = forecaster
    other = tmp_path / "other.csv"
    other.write_text("price\n1\n2\n")
    code, _, err = run(capsys, "predict", "--model", str(model_path), "--csv", str(other))
    assert code == 1 and err.strip() == (f"cgru predict: error: {other} has no column 'value'; "
                                         f"its columns are 'price'")


@pytest.mark.parametrize("content", [
    b"step,forecast\n1,2\n",                                        # a CSV given as the model
    b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" + b" " * 60,
    b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00",                 # a pickle
])
def test_predict_never_passes_on_numpys_allow_pickle_advice(capsys, tmp_path, series_csv,
                                                            content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    code, _, err = run(capsys, "predict", "--model", str(path), "--csv", str(series_csv))
    assert code == 1 and "is not a cgru model file" in err
    assert "allow_pickle" not in err and len(err.strip().splitlines()) == 1


def test_predict_on_an_object_array_npz(capsys, tmp_path, series_csv):
    path = tmp_path / "objects.npz"
    np.savez(path, __cgru__=np.array([{"a": 1}], dtype=object))
    code, _, err = run(capsys, "predict", "--model", str(path), "--csv", str(series_csv))
    assert code == 1 and "is not a cgru model file" in err and "allow_pickle" not in err


def test_a_hostile_model_file_gives_one_line_from_the_installed_command(tmp_path):
    path = tmp_path / "bomb.npz"
    path.write_bytes(b"PK\x03\x04" + b"\xff" * 100)
    result = subprocess.run([sys.executable, "-m", "cgru", "predict", "--model", str(path),
                             "--csv", forecast.DEMO_CSV], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"cgru predict: error: {path} is truncated or corrupted "
                                     f"(BadZipFile: File is not a zip file)")


def test_demo_output_dir_that_cannot_be_created(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run(capsys, "demo", "--output-dir", str(blocker / "sub"))
    assert code == 1 and out == ""
    assert err.startswith(f"cgru demo: error: cannot create --output-dir {blocker / 'sub'}")


def test_info_warns_when_an_environment_variable_holds_the_blas_below_the_cpu(tmp_path):
    from cgru import _blas_kernel
    best = _blas_kernel.best_kernel()
    if best is None or _blas_kernel.tier(best) < 4:
        pytest.skip("needs a CPU with AVX-512, where OPENBLAS_CORETYPE=Haswell holds it back")
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    out = subprocess.run([sys.executable, "-m", "cgru", "info"], env=env, capture_output=True,
                         text=True, timeout=120).stdout
    warning = next(line for line in out.splitlines() if line.startswith("warning:"))
    assert "Haswell" in warning and "OPENBLAS_CORETYPE=Haswell" in warning
