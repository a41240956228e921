"""Build script for mechinterp_c: one C extension, ``mechinterp_c._core``.

Every ``.c`` file under ``csrc/`` is compiled into the extension. ISA-specific
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

extra_compile = ["-std=gnu11", "-O3", "-fopenmp", "-fvisibility=hidden",
                 "-Wall", "-Wextra", "-Wmissing-prototypes", "-Wno-unused-parameter",
                 "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
extra_link = ["-fopenmp"]
if os.environ.get("MI_SANITIZE"):
    extra_compile += ["-O1", "-g", "-fno-omit-frame-pointer",
                      "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    extra_link += ["-fsanitize=address,undefined"]

core = Extension(
    "mechinterp_c._core",
    sources=sources,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
                   ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")],
    extra_compile_args=extra_compile + cjson_cflags,
    extra_link_args=extra_link,
    libraries=cjson_libs + ["m"],
)

setup(ext_modules=[core])
