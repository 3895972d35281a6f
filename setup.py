"""Build of cgru: the C engine in src_c/ and its Cython wrapper cgru/_engine.pyx.

Environment switches:
  CGRU_OPENMP=0   build without OpenMP (the engine then runs on one thread)
  CGRU_NATIVE=1   add -march=native (the wheel then runs only on CPUs like the build machine)
  CGRU_SANITIZE=address,undefined
                  a sanitizer build (any comma list that gcc's -fsanitize= accepts): -O1 -g
                  -fno-omit-frame-pointer instead of -O3, undefined behaviour aborts
                  (-fno-sanitize-recover=undefined), OpenMP stays on. Python must then run with
                  the sanitizer runtime preloaded: see .ci/sanitize.
The build probes the compiler for OpenMP, compiling and linking with the same flags the extension
gets (the user's CFLAGS and LDFLAGS and the sanitizer flags included), and prints what it chose:
-fopenmp (GCC, LLVM clang), else on macOS Apple clang's -Xpreprocessor -fopenmp with LLVM's libomp
(-lomp; its omp.h and library from CFLAGS/LDFLAGS, else from Homebrew's `brew install libomp` or
the active conda environment).
An -O level in the user's CFLAGS replaces the build's own (-O3, or -O1 for a sanitizer build).
What the build chose (compiler, flags, OpenMP) is compiled into the extension (CGRU_BUILD_FLAGS,
CGRU_BUILD_INFO) and reported by `cgru.info()` and `cgru info`: no generated file to ship or lose.
"""
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython import __version__ as cython_version
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = ["src_c/activations.c", "src_c/blas.c", "src_c/gates.c", "src_c/layer.c",
             "src_c/product.c", "src_c/step.c", "src_c/threads.c"]
# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which stops GCC from vectorising the
# kernels' index arithmetic (measured: 5x slower step()). -fno-trapping-math lets GCC turn the
# gate kernels' clamps and selects into blends without AVX-512's masks: with trapping math their
# AVX2 and SSE2 clones stayed scalar (measured on Zen 3: the gates took longer than the product).
# Neither changes a result: no reassociation, no contraction beyond GCC's default.
BASE_FLAGS = ["-std=gnu11", "-fno-math-errno", "-fno-wrapv", "-fno-trapping-math"]

OPENMP_PROBE = ("#include <omp.h>\nint main(void){int n=0;\n"
                "#pragma omp parallel reduction(+:n)\nn+=1;\nreturn omp_get_max_threads()>0?0:n;}\n")
PLAIN_PROBE = "int main(void){return 0;}\n"
SIMD_PROBE = ("int main(void){float a[8]={0};\n#pragma omp simd\n"
              "for(int i=0;i<8;i++)a[i]+=1;\nreturn (int)a[0]-1;}\n")


def _env_flags(name):
    return shlex.split(os.environ.get(name, ""))


def _builds_with(compiler, source, compile_flags, link_flags):
    """True when the compiler compiles and links this program as the extension is built: the
    compiler's own flags and the user's CFLAGS (both already in compiler_so), then compile_flags;
    the link with the user's CFLAGS and LDFLAGS (which setuptools also adds to the extension's
    link line), then link_flags. Linking an executable makes missing runtimes (libgomp, libasan)
    fail here instead of at import."""
    tmp = tempfile.mkdtemp(prefix="cgru-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=compile_flags)
        compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                 extra_postargs=_env_flags("LDFLAGS") + _env_flags("CFLAGS")
                                 + link_flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sanitizers():
    """The CGRU_SANITIZE list, normalised ("address,undefined"), or None when unset."""
    value = os.environ.get("CGRU_SANITIZE", "").strip()
    if not value or value == "0":
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names or any(not re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in names):
        raise SystemExit(f"cgru build: CGRU_SANITIZE must be a comma-separated list of "
                         f"sanitizers such as address,undefined; got {value!r}")
    return ",".join(names)


def _libomp_prefixes():
    """Where Apple clang may find LLVM's libomp (include/omp.h, lib/libomp.dylib) when CFLAGS and
    LDFLAGS do not say: Homebrew's libomp (keg-only, so never on the default paths), then the
    active conda environment's llvm-openmp."""
    found = []
    if shutil.which("brew"):
        try:
            out = subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True,
                                 timeout=60)
            if out.returncode == 0 and out.stdout.strip():
                found.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    found += ["/opt/homebrew/opt/libomp", "/usr/local/opt/libomp",
              os.environ.get("CONDA_PREFIX", "")]
    return [p for i, p in enumerate(found) if p and p not in found[:i]
            and os.path.isfile(os.path.join(p, "include", "omp.h"))]


def _openmp_choices():
    """(compile flags, link flags) for OpenMP, in the order the build tries them."""
    yield ["-fopenmp"], ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp of its own
        yield ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
        for prefix in _libomp_prefixes():
            yield ([f"-I{prefix}/include", "-Xpreprocessor", "-fopenmp"],
                   [f"-L{prefix}/lib", "-lomp"])


def _c_string(text):
    """A C string literal of ASCII text, for a -D macro."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        flags, link_flags = list(BASE_FLAGS), []
        user_sets_opt = any(re.fullmatch(r"-O.*", f) for f in _env_flags("CFLAGS"))
        sanitize = _sanitizers()
        if sanitize:
            sanitizer_flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=undefined",
                               "-fno-omit-frame-pointer", "-g"]
            flags = ([] if user_sets_opt else ["-O1"]) + flags + sanitizer_flags
            link_flags = [f"-fsanitize={sanitize}"]
            if not _builds_with(self.compiler, PLAIN_PROBE, flags, link_flags):
                raise SystemExit(f"cgru build: the compiler cannot build and link with "
                                 f"-fsanitize={sanitize} (CGRU_SANITIZE)")
            print(f"cgru build: sanitizers {sanitize}: {' '.join(flags)}; import cgru only with "
                  f"the runtime preloaded, e.g. LD_PRELOAD=$(gcc -print-file-name=libasan.so)",
                  file=sys.stderr)
        elif not user_sets_opt:
            flags = ["-O3"] + flags
        if user_sets_opt:
            print("cgru build: the -O level of CFLAGS is used", file=sys.stderr)
        if os.environ.get("CGRU_NATIVE") == "1":
            flags.append("-march=native")
        want_openmp = os.environ.get("CGRU_OPENMP", "1") != "0"
        openmp = None
        if want_openmp:
            openmp = next(((c, l) for c, l in _openmp_choices()
                           if _builds_with(self.compiler, OPENMP_PROBE, flags + c, link_flags + l)),
                          None)
        if openmp:
            compile_flags, link_flags = flags + openmp[0], link_flags + openmp[1]
            print(f"cgru build: OpenMP on (compile {' '.join(openmp[0])}, link "
                  f"{' '.join(openmp[1])})", file=sys.stderr)
        else:
            simd = (["-fopenmp-simd"] if _builds_with(self.compiler, SIMD_PROBE,
                                                      flags + ["-fopenmp-simd"], link_flags)
                    else [])
            compile_flags = flags + simd
            reason = "CGRU_OPENMP=0" if not want_openmp else "the compiler cannot build OpenMP code"
            banner = "*" * 78
            print(f"{banner}\ncgru build: OpenMP OFF ({reason}); the engine will run on ONE thread.\n"
                  f"{banner}", file=sys.stderr)
        # how this build was made, compiled into the extension for cgru.info(); the compiler's
        # name and version come from its own macros there (cgru/_engine.pyx)
        build_info = {
            "compiler_command": " ".join(self.compiler.compiler_so),
            "compile_flags": " ".join(compile_flags),
            "link_flags": " ".join(link_flags),
            "openmp_flags": " ".join(openmp[0]) if openmp else None,
            "native": os.environ.get("CGRU_NATIVE") == "1",
            "sanitize": sanitize,
            "cython": cython_version,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
            "platform": sysconfig.get_platform(),
        }
        # objects built with other flags (another CGRU_SANITIZE, CGRU_OPENMP, CFLAGS) or build
        # facts (another NumPy, Cython) are stale although their sources are not: rebuild
        # everything when these change
        stamp = os.path.join(self.build_temp, "cgru-flags.txt")
        record = "\n".join([" ".join(self.compiler.compiler_so), " ".join(compile_flags),
                            " ".join(self.compiler.linker_so), " ".join(link_flags),
                            json.dumps(build_info)])
        try:
            with open(stamp) as f:
                self.force = self.force or f.read() != record
        except OSError:
            self.force = True
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags
            ext.extra_link_args = link_flags
            ext.define_macros = [("CGRU_BUILD_FLAGS", _c_string(" ".join(compile_flags))),
                                 ("CGRU_BUILD_INFO", _c_string(json.dumps(build_info))),
                                 ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:  # only after a build that succeeded
            f.write(record)


extensions = [
    Extension(
        "cgru._engine",
        sources=["cgru/_engine.pyx"] + C_SOURCES,
        include_dirs=[numpy.get_include(), "src_c"],
        depends=[os.path.join("src_c", f) for f in os.listdir("src_c")] if os.path.isdir("src_c") else [],
    )
]

setup(
    ext_modules=cythonize(extensions, language_level=3),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
