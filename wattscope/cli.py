"""Command line: devices, run, replay, demo, export, compare.

Exit codes: 0 done; 1 the run failed; 2 bad input (config, recording, table) with a
message naming the file and key; 130 stopped with Ctrl-C (recording finalised). Every
error meant for the user is a ``WattscopeError``; ``main`` alone turns one into its message
and exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wattscope import __version__
from wattscope.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, UsageError, WattscopeError

BUNDLED_RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "h100-seed.wattscope"


def _headless(args: argparse.Namespace) -> bool:
    return bool(args.headless) or not sys.stdout.isatty()


def cmd_devices(args: argparse.Namespace) -> int:
    from wattscope.telemetry.devices import devices_command

    code, text = devices_command(sim=args.sim or None)
    print(text)
    return code


def _gpus_arg(text: str) -> tuple[int, ...]:
    """--gpus 0,1: CUDA ordinals as this process sees them (after CUDA_VISIBLE_DEVICES)."""
    try:
        ordinals = tuple(int(p) for p in text.split(","))
    except ValueError:
        ordinals = ()
    if not ordinals or any(o < 0 for o in ordinals) or len(set(ordinals)) != len(ordinals):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected distinct CUDA ordinals >= 0, e.g. 0 or 0,1")
    return ordinals


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from wattscope import config

    sweep = config.load(args.config)
    if args.gpus is not None:
        sweep = dataclasses.replace(sweep, run=dataclasses.replace(sweep.run, gpus=args.gpus))
    from wattscope.session import Session, default_output

    output = Path(args.output) if args.output else default_output(sweep, args.sim)
    if output.exists():
        raise UsageError(f"{output}: already exists; choose another file with -o")
    from wattscope.telemetry import NvmlUnavailable

    session = Session(sweep, output, sim=args.sim, gpus_from="--gpus" if args.gpus is not None else None)
    try:
        # Started here, before any display, so a missing GPU is a plain message with
        # nothing written rather than a traceback inside the app.
        session.start()
    except NvmlUnavailable as e:
        raise NvmlUnavailable(f"{e}; `wattscope run {args.config} --sim` runs the pipeline on a simulated GPU") from None
    if _headless(args):
        from wattscope.headless import run_live

        status = run_live(session)
    else:
        from wattscope.tui.app import run_app

        status = run_app(session)
    print(f"recording: {output}", file=sys.stderr)
    return {"completed": 0, "interrupted": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)


def _replay(path: str | Path, args: argparse.Namespace) -> int:
    from wattscope.recording import load

    if not args.speed > 0:  # also NaN
        raise UsageError(f"--speed {args.speed:g} is not allowed; expected a playback speed > 0")
    rec = load(path)
    if _headless(args):
        from wattscope.headless import run_replay

        run_replay(rec)
    else:
        from wattscope.tui.app import run_replay_app

        run_replay_app(rec, speed=args.speed)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    return _replay(args.recording, args)


def cmd_demo(args: argparse.Namespace) -> int:
    if not BUNDLED_RECORDING.is_file():
        raise UsageError(f"{BUNDLED_RECORDING}: the bundled recording is missing from this install")
    return _replay(BUNDLED_RECORDING, args)


def cmd_export(args: argparse.Namespace) -> int:
    from wattscope import export

    from wattscope.analysis import open_source

    sources = [open_source(p) for p in args.inputs]
    if args.traces:
        if len(args.inputs) != 1:
            raise UsageError("--traces exports one recording at a time")
        written = export.export_traces(sources[0], args.format, Path(args.output or "."))
        for p in written:
            print(p)
        return 0
    out = export.export(
        sources,
        fmt=args.format,
        table=args.table,
        out_path=Path(args.output) if args.output else None,
        idle_subtracted=args.idle_subtracted,
        per_token=args.per_token,
        cv=args.cv,
    )
    if args.output:
        print(args.output, file=sys.stderr)
    else:
        if isinstance(out, bytes):
            raise UsageError(f"--format {args.format} is binary; give an output file with -o")
        sys.stdout.write(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from wattscope import export
    from wattscope.analysis import open_source

    a, b = open_source(args.a), open_source(args.b)
    sys.stdout.write(export.format_compare(a, b, fmt=args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wattscope",
        description="Phase-separated (prefill/decode) energy of LLM inference across precisions, live.",
    )
    p.add_argument("--version", action="version", version=f"wattscope {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="list GPUs, working signals and their measured refresh periods")
    d.add_argument("--sim", action="store_true", help="describe the simulated GPU instead")
    d.set_defaults(func=cmd_devices)

    r = sub.add_parser("run", help="run a sweep from a TOML config and record it")
    r.add_argument("config", help="sweep config, e.g. configs/seed.toml")
    r.add_argument("--sim", action="store_true", help="simulated GPU and workload (demo/test; numbers are not measurements)")
    r.add_argument("--headless", action="store_true", help="print progress instead of opening the app (automatic when stdout is not a terminal)")
    r.add_argument("-o", "--output", help="recording file (default recordings/NAME-DATE.wattscope)")
    r.add_argument("--gpus", type=_gpus_arg, metavar="N[,N...]",
                   help="GPUs the model runs on and the energy is read from, as CUDA numbers them in this "
                        "shell (after CUDA_VISIBLE_DEVICES); several split the model (default: [run] gpus, else 0)")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="replay a recording on the live screen")
    rp.add_argument("recording")
    rp.add_argument("--headless", action="store_true", help="print the replayed run's tables instead of opening the app")
    rp.add_argument("--speed", type=float, default=1.0, help="playback speed (default 1.0)")
    rp.set_defaults(func=cmd_replay)

    dm = sub.add_parser("demo", help="replay the bundled real H100 recording")
    dm.add_argument("--headless", action="store_true")
    dm.add_argument("--speed", type=float, default=4.0, help="playback speed (default 4.0)")
    dm.set_defaults(func=cmd_demo)

    e = sub.add_parser("export", help="export tables (or raw traces) from recordings or CSV tables")
    e.add_argument("inputs", nargs="+", help="recordings (.wattscope) or measurement CSV tables")
    e.add_argument("--format", default="md", choices=["md", "csv", "json", "parquet", "latex"])
    e.add_argument("--table", default="all", choices=["phases", "power", "findings", "crosscheck", "all"])
    e.add_argument("--idle-subtracted", action="store_true", help="energies minus the idle baseline power over the same time")
    e.add_argument("--per-token", action="store_true", help="add energy per token columns")
    e.add_argument("--cv", action="store_true", help="add the repeat coefficient-of-variation columns")
    e.add_argument("--traces", action="store_true", help="export raw samples and windows (csv or parquet) into -o DIR")
    e.add_argument("-o", "--output", help="output file (directory with --traces); default stdout")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("compare", help="two sources side by side: ratios and findings")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--format", default="md", choices=["md", "text", "json"])
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except WattscopeError as e:
        print(f"wattscope: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # A file the user named cannot be read or written (a directory in the way, no
        # permission, disk full): bad input, said in one line rather than a traceback.
        where = f"{e.filename}: " if e.filename else ""
        print(f"wattscope: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
