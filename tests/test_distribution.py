"""The source distribution holds everything setup.py builds from and nothing it generates."""
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    (archive,) = list(out.iterdir())
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        return {name[len(top) + 1:] for name in tar.getnames()}


def test_the_sdist_holds_every_source_the_build_reads(sdist_names):
    needed = {"setup.py", "pyproject.toml", "README.md", "LICENSE", "cgru/_engine.pyx"}
    needed |= {f"src_c/{f}" for f in os.listdir(os.path.join(ROOT, "src_c"))}
    needed |= {f"cgru/data/{f}" for f in os.listdir(os.path.join(ROOT, "cgru", "data"))}
    assert needed - sdist_names == set()


def test_the_sdist_holds_no_generated_code(sdist_names):
    generated = {n for n in sdist_names if n.endswith((".so", ".pyd", ".pyc"))
                 or n == "cgru/_engine.c"}
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
