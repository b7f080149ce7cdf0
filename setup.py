"""Build chunkattn: the Python package chunkattn_core and its native module chunkattn_core._C.

The native module always carries the CPU kernels. When torch was built with CUDA and nvcc is
present, the CUDA kernels are compiled into it as well (architectures from TORCH_CUDA_ARCH_LIST,
else the visible GPU, as torch decides). When torch is CPU-only but nvcc is present, the CUDA
sources are still compiled with nvcc as a check, so a CUDA compile error fails the build.
"""

import glob
import os
import shutil
import subprocess

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_SOURCES = sorted(glob.glob("csrc/kernels/cuda/*.cu"))


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )


def check_archs(nvcc):
    """Architectures for the compile-only check: TORCH_CUDA_ARCH_LIST, else the oldest sm >= 80 and
    sm_90 (Hopper), where this nvcc knows them."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if listed:
        return [a.replace(".", "").replace("+PTX", "") for a in listed.replace(";", " ").split()]
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout.split()
    archs = sorted(int(a.split("_")[1]) for a in out if a.startswith("compute_") and a[8:].isdigit())
    return sorted({str(next(a for a in archs if a >= 80))} | ({"90"} if 90 in archs else set()))


class BuildExt(BuildExtension):
    def run(self):
        super().run()
        nvcc = find_nvcc()
        if torch.version.cuda is None and nvcc and CUDA_SOURCES:
            self.check_cuda_sources(nvcc)

    def check_cuda_sources(self, nvcc):
        out_dir = os.path.join(self.build_temp, "cuda_check")
        os.makedirs(out_dir, exist_ok=True)
        for arch in check_archs(nvcc):
            for src in CUDA_SOURCES:
                obj = os.path.join(out_dir, f"{os.path.basename(src)}.sm{arch}.o")
                cmd = [nvcc, "-std=c++17", "-O2", f"-arch=sm_{arch}", "-Icsrc", "-c", src, "-o", obj]
                print("cuda compile check:", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True, cwd=ROOT)


def native_extension():
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/kernels/cpu/*.cpp"))
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    with_cuda = torch.version.cuda is not None and find_nvcc() is not None
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda_ops/*.cpp")) + CUDA_SOURCES
        return CUDAExtension(
            "chunkattn_core._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("CHUNKATTN_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"],
            },
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "chunkattn_core._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="chunkattn",
    version="0.1.0",
    description="LLM serving with ChunkAttention (prefix-aware chunked KV cache, two-phase partition)",
    packages=find_packages(include=["chunkattn_core", "chunkattn_core.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11",
        "numpy",
        "gguf>=0.10",
        "tokenizers>=0.19",
        "safetensors",
        "jinja2",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "transformers>=4.46", "accelerate", "ruff"],
    },
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExt},
    entry_points={"console_scripts": ["chunkattn=chunkattn_core.cli:main"]},
)
