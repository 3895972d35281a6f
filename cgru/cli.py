"""The `cgru` command: demo, train, predict, info.

    cgru demo                       train a forecaster on the shipped weekly CO2 series
    cgru train --csv F --column C   the same on your own series
    cgru predict --model M --csv F  forecast the values after the end of a series
    cgru info                       version, compiler, flags, OpenMP, kernels, threads, BLAS

Errors in arguments or files print one line and exit with status 2 (arguments) or 1 (anything
else), never a traceback.
"""
import argparse
import os
import sys

import numpy as np

from . import forecast

# weekly data: two years in, a quarter ahead, yearly season
DEMO = forecast.Settings(window=104, horizon=13, season=52)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _training_options(parser, defaults):
    d = defaults
    parser.add_argument("--window", type=_positive(int), default=d.window,
                        help=f"past values the model reads (default {d.window})")
    parser.add_argument("--horizon", type=_positive(int), default=d.horizon,
                        help=f"future values it forecasts (default {d.horizon})")
    parser.add_argument("--season", type=_positive(int), default=d.season,
                        help="season length in steps, for the seasonal baselines"
                             + (f" (default {d.season})" if d.season else ""))
    parser.add_argument("--units", type=_positive(int), default=d.units,
                        help=f"units of the first GRU layer; the second has half (default "
                             f"{d.units})")
    parser.add_argument("--epochs", type=_positive(int), default=d.epochs,
                        help=f"most epochs; early stopping may end sooner (default {d.epochs})")
    parser.add_argument("--batch-size", type=_positive(int), default=d.batch_size,
                        help=f"default {d.batch_size}")
    parser.add_argument("--learning-rate", type=_positive(float), default=d.learning_rate,
                        help=f"Adam's learning rate (default {d.learning_rate})")
    parser.add_argument("--patience", type=_positive(int), default=d.patience,
                        help=f"epochs without validation improvement before stopping (default "
                             f"{d.patience})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser():
    parser = _Parser(prog="cgru", description="GRU forecasting on the cgru engine.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="train on the shipped weekly Mauna Loa CO2 series",
                          description="Train a GRU forecaster on the weekly Mauna Loa CO2 "
                          "series shipped with cgru (1958-2001), report test RMSE and MAE next "
                          "to naive, seasonal-naive and seasonal-naive-with-drift baselines, "
                          "write the model and a plot.")
    _training_options(demo, DEMO)
    demo.add_argument("--output-dir", default=".", help="where co2_gru.npz and "
                      "co2_forecast.png go, created when missing (default: the current "
                      "directory)")

    train = sub.add_parser("train", help="train a forecaster on a column of your CSV file",
                           description="Train a GRU forecaster on one column of a CSV file "
                           "(header row; empty cells are gaps, filled by interpolation).")
    train.add_argument("--csv", required=True, help="the CSV file")
    train.add_argument("--column", required=True, help="the column to forecast")
    train.add_argument("--time-column", help="a column of time stamps (used for labels)")
    _training_options(train, forecast.Settings())
    train.add_argument("--model", default="cgru_forecaster.npz",
                       help="where the model goes (default cgru_forecaster.npz)")
    train.add_argument("--plot", help="write a PNG of the test forecasts here (needs matplotlib)")

    predict = sub.add_parser("predict", help="forecast after the end of a series",
                             description="Forecast the next values after the last row of a "
                             "CSV file with a model from `cgru train` or `cgru demo`; prints "
                             "CSV (step, forecast).")
    predict.add_argument("--model", required=True, help="a model file")
    predict.add_argument("--csv", required=True, help="the CSV file")
    predict.add_argument("--column", help="the column (default: the one the model was "
                         "trained on)")
    predict.add_argument("--output", help="write the CSV here instead of standard output")

    sub.add_parser("info", help="version, compiler and flags, OpenMP, kernels, threads, BLAS",
                   description="Print what this cgru was built with (compiler, flags, OpenMP "
                   "runtime) and runs on (the kernels the CPU dispatch chose, threads, BLAS).")
    return parser


def _settings(args):
    return forecast.Settings(window=args.window, horizon=args.horizon, season=args.season,
                             units=args.units, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, patience=args.patience,
                             seed=args.seed)


def _writable(path, what):
    """Fail now (before any training) unless `path` can be written: not a directory, in an
    existing directory this process may write in, and, when it exists, writable itself."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise forecast.ForecastError(f"{what} {path} is a directory")
    if not os.path.isdir(directory):
        raise forecast.ForecastError(f"{what} {path}: its directory does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or \
            (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise forecast.ForecastError(f"{what} {path}: not writable")


def _output_dir(path):
    """--output-dir, created when missing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise forecast.ForecastError(f"--output-dir {path} is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise forecast.ForecastError(f"cannot create --output-dir {path}: {e.strerror}") from None
    return path


def _train(path, column, time_column, settings, model_path, plot_path, quiet, title):
    times, values = forecast.read_series(path, column, time_column)
    forecast.require_rows(values, path)
    gaps = int(np.isnan(values).sum())
    series = forecast.fill_gaps(values)
    print(f"{path}: {len(series)} values of {column!r}"
          + (f" from {times[0]} to {times[-1]}" if times else "")
          + (f", {gaps} gaps filled by interpolation" if gaps else ""))
    model, report, metadata = forecast.train_forecaster(series, settings,
                                                        verbose=0 if quiet else 1)
    w = report["windows"]
    print(f"windows: {w['train']} train, {w['validation']} validation, {w['test']} test "
          f"(window {settings.window}, horizon {settings.horizon}); {report['epochs_run']} epochs, "
          f"best {report['best_epoch']}")
    print(_scores(report))
    metadata.update(column=column, time_column=time_column)
    model.save(model_path, metadata=metadata)
    print(f"model written to {model_path}")
    if plot_path:
        if forecast.plot_forecast(plot_path, report, settings, title, times):
            print(f"plot written to {plot_path}")
        else:
            print("plot skipped: matplotlib is not installed (pip install matplotlib)")


def _scores(report):
    """The table of test scores (GRU and baselines), then the strongest baseline and the GRU's
    margin over it (how much lower, in percent of the baseline's, the GRU's errors are)."""
    rows = [("GRU", report["test_rmse"], report["test_mae"])]
    rows += [(name, b["rmse"], b["mae"]) for name, b in report["baselines"].items()]
    lines = [f"{'test, all horizons':<26}{'RMSE':>10}{'MAE':>10}"]
    lines += [f"{name:<26}{r:>10.4f}{m:>10.4f}" for name, r, m in rows]
    name = report["strongest"]
    best = report["baselines"][name]
    rmse_margin = 100 * (1 - report["test_rmse"] / best["rmse"])
    mae_margin = 100 * (1 - report["test_mae"] / best["mae"])
    beats = rmse_margin > 0 and mae_margin > 0
    lines.append(f"strongest baseline (lowest RMSE): {name}; the GRU "
                 + ("beats it" if beats else "does NOT beat it") + ": RMSE "
                 + _margin(rmse_margin) + ", MAE " + _margin(mae_margin))
    return "\n".join(lines)


def _margin(percent):
    return f"{abs(percent):.1f}% {'lower' if percent >= 0 else 'higher'}"


def _predict(args):
    if args.output:
        _writable(args.output, "--output")
    model = forecast.load_forecaster(args.model)
    column = args.column or model.metadata["column"]
    if column is None:
        raise forecast.ForecastError(f"{args.model} names no column; give --column")
    _, values = forecast.read_series(args.csv, column)
    forecast.require_rows(values, args.csv)
    future = forecast.forecast_next(model, forecast.fill_gaps(values))
    lines = ["step,forecast"] + [f"{i},{v:.6g}" for i, v in enumerate(future, 1)]
    text = "\n".join(lines) + "\n"
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as e:
            raise forecast.ForecastError(f"cannot write {args.output}: {e.strerror}") from None
    else:
        sys.stdout.write(text)


def _info():
    import cgru
    facts = cgru.info()
    build = facts["build"]
    unknown = "unknown (an extension built before cgru recorded it)"
    print(f"cgru {facts['version']}")
    print(f"compiler: {facts['compiler'] or unknown}"
          + (f" ({build['compiler_command']})" if build.get("compiler_command") else ""))
    print(f"build flags: {facts['build_flags']}")
    link = facts["link_flags"]
    print(f"link flags: {unknown if link is None else link or '(none)'}")
    if build:
        print(f"built with: Cython {build.get('cython')}, NumPy {build.get('numpy')}, Python "
              f"{build.get('python')}, for {build.get('platform')}"
              + ("; -march=native (CGRU_NATIVE=1)" if build.get("native") else "")
              + (f"; sanitizers {build['sanitize']}" if build.get("sanitize") else ""))
    if facts["openmp"]:
        print(f"OpenMP: on ({build.get('openmp_flags') or 'flags unknown'}), "
              f"{facts['openmp_version'] or 'version unknown'}; runtime "
              f"{facts['openmp_runtime'] or 'unknown'}: {facts['openmp_runtime_path'] or unknown}")
    else:
        print("OpenMP: off (the engine runs on one thread)")
    print("fork: children keep their threads" if facts["fork_keeps_threads"] else
          "fork: children of a process that used threads run on one thread")
    print(f"kernels (CPU dispatch): gates {facts['kernels'] or unknown}; per-step products "
          f"{facts['recurrent_product'] or unknown}; bfloat16 W_hh (quantize) "
          f"{facts['bfloat16_product'] or unknown}; int8 W_hh "
          f"{facts['int8_product'] or unknown}")
    print(f"threads: {facts['threads']} (cgru.set_num_threads or OMP_NUM_THREADS); a call runs "
          f"at most {facts['cpus_available']}, the CPUs this process may use")
    print("BLAS: SciPy's, through scipy.linalg.cython_blas"
          + ("; held to one thread per engine call" if facts["blas_threads_controlled"] else ""))
    from threadpoolctl import threadpool_info

    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so threadpoolctl can see it)
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            path = lib.get("filepath") or ""
            whose = "SciPy's, used by cgru" if "scipy" in os.path.basename(
                os.path.dirname(path)) else "loaded by another package"
            print(f"  {lib.get('internal_api')} {lib.get('version')} ({whose}; "
                  f"{lib.get('num_threads')} threads by default): {path}")
    kernel = facts["blas_kernel"]
    print(f"BLAS kernel: {kernel['running'] or 'unknown'} (the best this CPU supports: "
          f"{kernel['expected'] or 'unknown'})")
    if kernel["below"]:
        print(f"warning: {kernel['message']}")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            _info()
        elif args.command == "predict":
            _predict(args)
        elif args.command == "demo":
            directory = _output_dir(args.output_dir)
            model_path = os.path.join(directory, "co2_gru.npz")
            plot_path = os.path.join(directory, "co2_forecast.png")
            _writable(model_path, "--output-dir")
            _writable(plot_path, "--output-dir")
            _train(forecast.DEMO_CSV, "co2", "date", _settings(args), model_path, plot_path,
                   args.quiet, "Weekly CO2 at Mauna Loa (ppm), test period")
        else:
            _writable(args.model, "--model")  # before training, not after
            if args.plot:
                _writable(args.plot, "--plot")
            _train(args.csv, args.column, args.time_column, _settings(args), args.model,
                   args.plot, args.quiet, f"{args.column}: test period")
    except forecast.ForecastError as e:
        print(f"cgru {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cgru {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cgru {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
