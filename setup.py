"""Build and install stafast.

Import names: only `stafast`. The Triton sources live at the top in `kernels/` and are
installed as `stafast.kernels` (a top-level `kernels` package would clash with others).

The C++/CUDA extension `stafast._C` (csrc/) is built when its sources are present:
the CPU part always, the CUDA part when torch has CUDA and nvcc is found
(`STAFAST_CUDA=0/1` overrides). `STAFAST_EXT=0` skips the extension entirely.
Build with `pip install --no-build-isolation .` so the installed torch is used.
"""
import glob
import os
import runpy
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ["stafast", "stafast.ops", "stafast.models", "stafast.losses", "stafast.data",
            "stafast.kernels"]


def _flag(name):
    value = os.environ.get(name)
    return None if value is None else value.strip() not in ("0", "", "false", "no")


def extensions():
    if _flag("STAFAST_EXT") is False:
        return [], {}
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not cpu_sources:
        return [], {}
    nvcc = shutil.which("nvcc")
    if nvcc and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        # torch guesses CUDA_HOME from nvcc's folder; a wrapper in /usr/local/bin misleads it.
        for home in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"):
            if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
                os.environ["CUDA_HOME"] = home
                break
    from torch.utils import cpp_extension

    want_cuda = _flag("STAFAST_CUDA")
    have_cuda = cpp_extension.CUDA_HOME is not None and shutil.which("nvcc") is not None
    if want_cuda is None:
        want_cuda = have_cuda and __import__("torch").version.cuda is not None
    # torch's BuildExtension adds the C++ standard its headers need. -fno-math-errno lets sqrt and exp
    # vectorise (nothing here reads errno).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    if _flag("STAFAST_NATIVE") is not False:  # vectorise for this CPU (the build runs where it is used)
        cxx.append("-march=native")
    kwargs = dict(name="stafast._C", include_dirs=[os.path.join(HERE, "csrc")],
                  extra_link_args=["-fopenmp"])
    if want_cuda:
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--expt-relaxed-constexpr"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):  # else torch's flags for that list (the GPU check: 9.0)
            nvcc += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        ext = cpp_extension.CUDAExtension(
            sources=cpu_sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DSTAFAST_WITH_CUDA"], "nvcc": nvcc + ["-DSTAFAST_WITH_CUDA"]},
            **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=cpu_sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


def extras() -> dict:
    """The optional dependencies, from their one list (stafast/extras.py), and "test": what the test
    suite needs (every extra but DALI, which `make test` adds as its own extra)."""
    extras = runpy.run_path(os.path.join(HERE, "stafast", "extras.py"))["EXTRAS"]
    tested = sorted({r for name, reqs in extras.items() if name != "dali" for r in reqs})
    return {**extras, "test": ["pytest", "pytest-benchmark", *tested]}


ext_modules, cmdclass = extensions()

setup(
    name="stafast",
    version="0.1.0",
    description="Fast diversity-regularized spatiotemporal attention (Li et al., CVPR 2018) for video person re-ID",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"stafast.kernels": "kernels"},
    install_requires=["torch>=2.6", "torchvision", "numpy", "scipy", "tqdm", "pillow", "matplotlib"],
    extras_require=extras(),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
