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
    if not src.is_file():
        raise SystemExit(f"{src}: no such wheel")
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
    found = {m.group(1): name for name in names if (m := NATIVE.match(name))}
    missing = sorted(keep - set(found))
    if missing:  # a typo would otherwise leave a wheel without any GPU library
        raise SystemExit(f"--keep {', '.join(missing)}: not in {src.name}; it holds {', '.join(sorted(found))}")
    dropped = {name for lib, name in found.items() if lib not in keep and lib != "cpu"}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
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
