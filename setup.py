"""Build of cgru: the C engine in src_c/ and its Cython wrapper cgru/_engine.pyx.

Environment switches:
  CGRU_OPENMP=0   build without OpenMP (the engine then runs on one thread)
  CGRU_NATIVE=1   add -march=native (the wheel then runs only on CPUs like the build machine)
The build probes the compiler for OpenMP and prints what it chose.
"""
import os
import shutil
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = ["src_c/activations.c", "src_c/blas.c", "src_c/layer.c", "src_c/step.c", "src_c/threads.c"]
# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which stops GCC from vectorising the
# kernels' index arithmetic (measured: 5x slower step())
BASE_FLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-fno-wrapv"]


def _compiles_with(compiler, flags):
    """True when the compiler builds and links a small OpenMP program with these flags."""
    tmp = tempfile.mkdtemp(prefix="cgru-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){int n=0;\n"
                    "#pragma omp parallel reduction(+:n)\nn+=1;\nreturn omp_get_max_threads()>0?0:n;}\n")
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        flags = list(BASE_FLAGS)
        if os.environ.get("CGRU_NATIVE") == "1":
            flags.append("-march=native")
        want_openmp = os.environ.get("CGRU_OPENMP", "1") != "0"
        openmp = want_openmp and _compiles_with(self.compiler, ["-fopenmp"])
        if openmp:
            compile_flags, link_flags = flags + ["-fopenmp"], ["-fopenmp"]
            print("cgru build: OpenMP on (-fopenmp)", file=sys.stderr)
        else:
            simd = ["-fopenmp-simd"] if _compiles_with(self.compiler, ["-fopenmp-simd"]) else []
            compile_flags, link_flags = flags + simd, []
            reason = "CGRU_OPENMP=0" if not want_openmp else "the compiler cannot build OpenMP code"
            banner = "*" * 78
            print(f"{banner}\ncgru build: OpenMP OFF ({reason}); the engine will run on ONE thread.\n"
                  f"{banner}", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags
            ext.extra_link_args = link_flags
            ext.define_macros = [("CGRU_BUILD_FLAGS", '"' + " ".join(compile_flags) + '"'),
                                 ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        super().build_extensions()


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
