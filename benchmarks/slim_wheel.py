"""Repack a bitsandbytes wheel with the native library of one CUDA version only.

A device call carries at most 64 MiB (working tree and wheels together); the wheel holds
a library for every CUDA and ROCm version (123 MiB unpacked, 41 MiB packed), while the
lent machines' torch is built for CUDA 13.0 and loads ``libbitsandbytes_cuda130.so``.
Every other native library is left out, and RECORD with it, so pip installs the rest
as it would the whole wheel.

    python benchmarks/slim_wheel.py bitsandbytes-0.50.2-...whl .whl --keep cuda130
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

NATIVE = re.compile(r"^bitsandbytes/libbitsandbytes_(\w+)\.so$")


def slim(src: Path, out_dir: Path, keep: set[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    if dst.resolve() == src.resolve():
        raise SystemExit(f"{dst}: would overwrite its own input; choose another folder")
    dropped: set[str] = set()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        names = zin.namelist()
        for name in names:
            m = NATIVE.match(name)
            if m and m.group(1) not in keep and m.group(1) != "cpu":
                dropped.add(name)
        for name in names:
            if name in dropped:
                continue
            data = zin.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(ln for ln in lines if ln.split(",", 1)[0] not in dropped) + "\n").encode()
            zout.writestr(zin.getinfo(name), data)
    print(f"{dst}: {dst.stat().st_size / 2**20:.1f} MiB (left out {len(dropped)} native libraries)")
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--keep", action="append", default=[], help="native library to keep, e.g. cuda130 (repeatable)")
    args = ap.parse_args()
    if not args.keep:
        ap.error("--keep: name at least one library, e.g. cuda130")
    slim(args.wheel, args.out_dir, set(args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
