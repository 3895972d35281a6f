"""The `cgru` command end to end: demo, train, predict, info, and its error paths."""
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


def test_demo_trains_on_the_shipped_co2_series_and_beats_seasonal_naive(capsys, tmp_path):
    status, out, err = run(capsys, "demo", *FAST, "--output-dir", str(tmp_path))
    assert status == 0, err
    assert "2284 values of 'co2'" in out and "59 gaps filled" in out
    report = {line.split()[0]: float(line.split()[-2]) for line in out.splitlines()
              if line.startswith(("GRU ", "seasonal-naive"))}
    assert report["GRU"] < report["seasonal-naive"]
    assert "the GRU beats the seasonal-naive baseline" in out
    assert (tmp_path / "co2_gru.npz").exists()
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "co2_forecast.png").read_bytes()[:4] == b"\x89PNG"
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
    assert "BLAS:" in out and "build flags: -O3" in out


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
    (["demo", "--output-dir", "/no/such/dir"], 1, "is not a directory"),
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
