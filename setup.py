"""Build script for mechinterp_c: the C extension ``mechinterp_c._core`` and
its test companion ``mechinterp_c._testing``.

``_core`` is every ``.c`` file under ``csrc/`` except the fuzzers and
``csrc/python/testing/``. ``_testing`` (the kernels' raw contracts for the test
suite, kept out of the product as CPython keeps ``_testcapi`` apart) is
``csrc/python/testing/`` and the argument converters: it calls the C core
through the table ``_core`` exports (``csrc/python/core_api.h``), so it has no
copy of the core nor settings of its own. ISA-specific
kernels select their instruction set with ``#pragma GCC target`` inside the
file and are chosen at import time, so the build never uses ``-march=native``
(a wheel built here runs on any x86-64) nor ``-ffast-math`` (it would change
float behaviour for the whole Python process).
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy
from setuptools import Extension, setup


def cjson_flags():
    """Compiler and linker flags for Debian's libcjson-dev, via pkg-config."""
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", "libcjson"],
                             check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        if os.path.exists("/usr/include/cjson/cJSON.h"):
            out = ["-I/usr/include/cjson", "-lcjson"]
        else:
            sys.exit("mechinterp_c: cJSON not found. Install Debian's package "
                     "'libcjson-dev' (apt-get install libcjson-dev) and pkg-config.")
    cflags = [f for f in out if not f.startswith("-l")]
    libs = [f[2:] for f in out if f.startswith("-l")]
    return cflags, libs


cjson_cflags, cjson_libs = cjson_flags()
sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
sources = [s for s in sources if "/fuzz/" not in s]
testing_sources = [s for s in sources if "/python/testing/" in s]
sources = [s for s in sources if s not in testing_sources]

extra_compile = ["-std=gnu11", "-O3", "-fopenmp", "-fvisibility=hidden",
                 "-Wall", "-Wextra", "-Wmissing-prototypes", "-Wno-unused-parameter",
                 "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
extra_link = ["-fopenmp"]
if os.environ.get("MI_SANITIZE"):
    extra_compile += ["-O1", "-g", "-fno-omit-frame-pointer",
                      "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    extra_link += ["-fsanitize=address,undefined"]

common = dict(
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
                   ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")],
    extra_compile_args=extra_compile + cjson_cflags,
    extra_link_args=extra_link,
    libraries=cjson_libs + ["m"],
)
core = Extension("mechinterp_c._core", sources=sources, **common)
testing = Extension("mechinterp_c._testing", sources=["csrc/python/convert.c"] + testing_sources,
                    **common)

setup(ext_modules=[core, testing])
