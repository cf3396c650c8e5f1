"""Command line: devices, run, replay, demo, serve, export, plot, compare, init, serve-bench.

Exit codes: 0 done; 1 the run failed (the runner failed, the recording could not be
written, or the display failed; the recording's status says which); 2 bad input (config,
recording, table) with a message naming the file and key; and for a run stopped by a
signal or a closed output, 128 + the signal's number: 129 SIGHUP, 130 Ctrl-C (SIGINT),
141 a broken pipe (SIGPIPE: the reader of the output left), 143 SIGTERM. A run that
stopped, for whatever reason, leaves its recording finalised with a status that says how
it ended. Every error meant for the user is a ``WattscopeError``; ``main`` alone turns one
into its message and exit code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from wattscope import __version__
from wattscope.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, UsageError, WattscopeError
from wattscope.safe_text import printable
from wattscope.tui.refresh import DEFAULT_FPS, MAX_FPS, MIN_FPS, frame_seconds


def _headless(args: argparse.Namespace) -> bool:
    # A Textual driver named in the environment (textual-serve's web driver under
    # `wattscope serve`) draws the app somewhere other than stdout, which is then a pipe.
    return bool(args.headless) or not (sys.stdout.isatty() or os.environ.get("TEXTUAL_DRIVER"))


def _fps_option(parser: argparse.ArgumentParser) -> None:
    """``--fps`` of every command that opens the app; read back by ``_frame_s``."""
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS,
                        help=f"the app's refresh rate, frames per second ({MIN_FPS:g}-{MAX_FPS:g}, "
                             f"default {DEFAULT_FPS:g}; lower for slow links)")


def _frame_s(args: argparse.Namespace) -> float:
    """Seconds between the app's frames, from ``--fps`` (checked before anything starts)."""
    return frame_seconds(args.fps)


def cmd_devices(args: argparse.Namespace) -> int:
    from wattscope.telemetry.devices import devices_command

    code, text = devices_command(sim=args.sim or None, as_json=args.json)
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
    from wattscope.resources import config_path

    frame_s = _frame_s(args)
    sweep = config.load(config_path(args.config))
    if args.gpus is not None:
        sweep = dataclasses.replace(sweep, run=dataclasses.replace(sweep.run, gpus=args.gpus))
    from wattscope.session import Session, default_output

    output = Path(args.output) if args.output else default_output(sweep, args.sim)
    if output.exists():
        raise UsageError(f"{output}: already exists; choose another file with -o")
    from wattscope.telemetry import NvmlUnavailable

    lines = None
    if args.jsonl:
        from wattscope.jsonl import JsonLines

        # stdout carries only the event stream; progress goes to stderr.
        lines = JsonLines(sys.stdout, on_closed=lambda: session.stop("output-closed", "the reader of --jsonl closed the pipe"))
    headless = args.jsonl or _headless(args)
    if headless:
        from wattscope.headless import run_live
    else:
        from wattscope.tui.app import run_app
    session = Session(sweep, output, sim=args.sim, on_event=lines, gpus_from="--gpus" if args.gpus is not None else None)
    try:
        # The display starts the session before it shows anything, so a missing GPU is a
        # plain message with nothing written rather than a traceback inside the app.
        status = run_live(session, out=sys.stderr if args.jsonl else None) if headless else run_app(session, frame_s)
    except NvmlUnavailable as e:
        raise NvmlUnavailable(f"{e}; `wattscope run {args.config} --sim` runs the pipeline on a simulated GPU") from None
    if lines is not None and lines.closed:
        # The reader went away: point stdout at /dev/null so the interpreter's last flush
        # does not fail on the closed pipe (Python's documented remedy).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if status in RUN_FAULTS and session.reason:
        _say(f"wattscope: error: {session.reason}; the run was stopped, the recording keeps what was measured")
    _say(f"recording: {output} ({status})")
    return RUN_EXIT_CODES.get(status, EXIT_FAILED)


# `wattscope run`'s exit code for each way a run ends (events.RUN_ENDINGS); a stop by a
# signal exits as the shell's 128 + signum, a broken pipe as SIGPIPE's.
RUN_EXIT_CODES = {
    "completed": 0,
    "interrupted": EXIT_INTERRUPTED,
    "hangup": 128 + signal.SIGHUP,
    "output-closed": 128 + signal.SIGPIPE,
    "terminated": 128 + signal.SIGTERM,
}
# Endings that are faults: `run` prints their reason as an error.
RUN_FAULTS = ("failed", "write-error", "display-failed", "output-closed")


def _say(line: str) -> None:
    """A line on stderr, which may be closed too (``2>&1 | head``)."""
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass


def _sweeps_only(label: str, meta: dict, command: str) -> None:
    """Refuse a serve-bench recording where a command reads sweeps (it has no
    configurations, rounds or ratios), naming the table that does show it."""
    from wattscope.serve.analysis import is_serving

    if is_serving(meta):
        raise UsageError(f"{label}: a serving recording (serve-bench); {command} reads sweep recordings; "
                         f"its results: wattscope export {label} --table serving")


def _replay(path: str | Path, args: argparse.Namespace) -> int:
    from wattscope.recording import load

    frame_s = _frame_s(args)
    if not args.speed > 0:  # also NaN
        raise UsageError(f"--speed {args.speed:g} is not allowed; expected a playback speed > 0")
    rec = load(path)
    from wattscope.serve.analysis import is_serving

    if is_serving(rec.meta):
        return _replay_serving(rec, args, frame_s)
    if _headless(args):
        from wattscope.headless import run_replay

        run_replay(rec)
    else:
        from wattscope.tui.app import run_replay_app

        run_replay_app(rec, speed=args.speed, frame_s=frame_s)
    return 0


def _replay_serving(rec: object, args: argparse.Namespace, frame_s: float) -> int:
    """A serve-bench recording: the serving screen, or headless its phases table as the
    replayed state ends with it."""
    if _headless(args):
        from wattscope.serve.source import ServeReplay
        from wattscope.serve_report import format_serving

        replay = ServeReplay(rec)
        replay.run_fast()
        sys.stdout.write(str(format_serving(list(replay.serving().rates), "text")))
    else:
        from wattscope.tui.serving import run_serve_replay_app

        run_serve_replay_app(rec, speed=args.speed, frame_s=frame_s)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    return _replay(args.recording, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from wattscope.resources import bundled_recording

    return _replay(bundled_recording(), args)


def cmd_init(args: argparse.Namespace) -> int:
    from wattscope.config_reference import starter_config
    from wattscope.files import write_new

    path = Path(args.path)
    write_new(path, starter_config())
    print(f"wrote {path}; try it with: wattscope run {path} --sim", file=sys.stderr)
    return 0


# What `serve` can show in a browser: the commands that open the app.
SERVED = ("run", "replay", "demo")
SERVE_INSTALL = "pip install 'wattscope[serve]'"


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the app of ``run``/``replay``/``demo`` to browsers with textual-serve. Each
    page load starts its own process of that command (a ``run`` page, its own sweep and
    recording), so the command is checked here, once, before anything is served."""
    served = args.served
    if not served or served[0] not in SERVED:
        got = f"`{served[0]}`" if served else "nothing"
        raise UsageError(f"serve: got {got}; expected one of {', '.join(SERVED)} and its arguments, "
                         "e.g. `wattscope serve demo`")
    inner = build_parser().parse_args(served)
    if inner.headless:
        raise UsageError("serve: --headless is not allowed; serve shows the app in a browser")
    _frame_s(inner)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not allowed; expected a TCP port from 1 to 65535")
    if inner.command == "run":
        from wattscope import config
        from wattscope.resources import config_path

        config.load(config_path(inner.config))
    elif inner.command == "replay":
        from wattscope.recording import load

        load(inner.recording)
    else:
        from wattscope.resources import bundled_recording

        bundled_recording()  # says so if it is missing from this install
    try:
        from textual_serve.server import Server
    except ImportError:
        raise UsageError(f"serve needs textual-serve, which is not installed: {SERVE_INSTALL}") from None
    command = shlex.join([sys.executable, "-m", "wattscope", *served])
    Server(command, host=args.host, port=args.port, title=f"wattscope {shlex.join(served)}",
           public_url=args.public_url).serve()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from wattscope import export

    from wattscope.analysis import open_source

    if args.table == "serving":
        return _export_serving(args)
    sources = [open_source(p) for p in args.inputs]
    if args.format == "perfetto":
        return _export_perfetto(sources, args)
    if not args.traces:
        for path, src in zip(args.inputs, sources):
            _sweeps_only(path, src.meta, "export --table " + args.table)
    if args.traces:
        if len(args.inputs) != 1:
            raise UsageError("--traces exports one recording at a time")
        written = export.export_traces(sources[0], args.format, Path(args.output or "."))
        for p in written:
            print(p)
        return 0
    if args.format == "csv" and args.table == "all":
        for p in export.export_csv_tables(sources, args.output, idle_subtracted=args.idle_subtracted):
            print(p, file=sys.stderr)
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


def cmd_plot(args: argparse.Namespace) -> int:
    from wattscope.plot import plot

    print(plot(args.sources, args.output, args.kind, config=args.config, rate=args.rate), file=sys.stderr)
    return 0


def _export_perfetto(sources: list, args: argparse.Namespace) -> int:
    from wattscope.perfetto import export_perfetto

    if len(sources) != 1 or args.traces:
        raise UsageError("--format perfetto exports one recording's timeline (samples and windows included); "
                         "give one recording, without --traces")
    text = export_perfetto(sources[0], args.output)
    if args.output:
        print(args.output, file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _export_serving(args: argparse.Namespace) -> int:
    from wattscope import export
    from wattscope.serve_report import export_serving

    if len(args.inputs) != 1:
        raise UsageError("--table serving exports one serving recording at a time")
    fmt = {"md": "md", "csv": "csv", "json": "json", "parquet": "parquet"}.get(args.format)
    if fmt is None:
        raise UsageError(f"--table serving exports as md, csv, json or parquet, not {args.format}")
    out = export_serving(args.inputs[0], fmt, per_request=args.per_request)
    if args.output:
        export.write_atomic(args.output, out)
        print(args.output, file=sys.stderr)
    elif isinstance(out, bytes):
        raise UsageError(f"--format {args.format} is binary; give an output file with -o")
    else:
        sys.stdout.write(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from wattscope import export
    from wattscope.analysis import open_source
    from wattscope.serve.analysis import is_serving

    a, b = open_source(args.a), open_source(args.b)
    serving = [is_serving(a.meta), is_serving(b.meta)]
    if all(serving):
        return _compare_serving(a.data, b.data, args.format)
    if any(serving):
        kinds = ["a serving recording (serve-bench)" if s else f"a sweep {src.kind}" for s, src in zip(serving, (a, b))]
        raise UsageError(f"compare: {args.a} is {kinds[0]} and {args.b} is {kinds[1]}; compare reads two sweeps "
                         "or two serving recordings")
    sys.stdout.write(export.format_compare(a, b, fmt=args.format))
    return 0


def _compare_serving(a: object, b: object, fmt: str) -> int:
    from wattscope.serve.compare import compare_serving
    from wattscope.serve_report import format_serving_compare

    sys.stdout.write(format_serving_compare(compare_serving(a, b), fmt))
    return 0


def cmd_serve_bench(args: argparse.Namespace) -> int:
    from wattscope.serve import config as serve_config

    bench = serve_config.load(args.config)
    for p in args.precision or ():
        if p not in bench.serve.precisions:
            raise UsageError(f"--precision {p}: not in {args.config}'s serve.precisions ({', '.join(bench.serve.precisions)})")
    output = Path(args.output) if args.output else Path("recordings") / f"{bench.name}-serve.wattscope"
    if output.exists():
        raise UsageError(f"{output}: already exists; choose another file with -o")
    frame_s = _frame_s(args)
    from wattscope.serve.session import ServeSession

    precisions = tuple(args.precision or ()) or None
    if _headless(args):
        session = ServeSession(bench, output, sim=args.sim, precisions=precisions,
                               progress=lambda line: print(line, flush=True))
        status = session.run()
    else:
        from wattscope.serve.source import LiveServe
        from wattscope.tui.serving import run_serve_app

        live = LiveServe(lambda on_event: ServeSession(
            bench, output, sim=args.sim, precisions=precisions, on_event=on_event))
        session = live.session
        status = run_serve_app(live, frame_s)
    if status in RUN_FAULTS and session.reason:
        _say(f"wattscope: error: {session.reason}; the run was stopped, the recording keeps what was measured")
    from wattscope.serve_report import export_serving

    try:
        sys.stdout.write(str(export_serving(output, "text")))
    except OSError:  # the output closed during the run: the recording is what stays
        pass
    _say(f"recording: {output}")
    return RUN_EXIT_CODES.get(status, EXIT_FAILED)


def _serve_bench_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve-bench", help="drive a server (or an in-process engine) with open-loop load and record it")
    s.add_argument("config", help="serving config with a [serve] table, e.g. benchmarks/serve_qwen3b.toml")
    s.add_argument("--sim", action="store_true", help="simulated GPU (with engine 'sim' always; demo/test)")
    s.add_argument("--precision", action="append", help="run only this one of serve.precisions (repeatable)")
    s.add_argument("-o", "--output", help="recording file (default recordings/NAME-serve.wattscope)")
    s.add_argument("--headless", action="store_true",
                   help="print progress lines instead of opening the app (automatic when stdout is not a terminal)")
    _fps_option(s)
    s.set_defaults(func=cmd_serve_bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wattscope",
        description="Phase-separated (prefill/decode) energy of LLM inference across precisions, live.",
    )
    p.add_argument("--version", action="version", version=f"wattscope {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="list GPUs, working signals and their measured refresh periods")
    d.add_argument("--sim", action="store_true", help="describe the simulated GPU instead")
    d.add_argument("--json", action="store_true", help="print the description as JSON (one object per GPU)")
    d.set_defaults(func=cmd_devices)

    r = sub.add_parser("run", help="run a sweep from a TOML config and record it")
    r.add_argument("config", help="sweep config file, or the name of a bundled one (quick, seed)")
    r.add_argument("--sim", action="store_true", help="simulated GPU and workload (demo/test; numbers are not measurements)")
    r.add_argument("--headless", action="store_true", help="print progress instead of opening the app (automatic when stdout is not a terminal)")
    r.add_argument("-o", "--output", help="recording file (default recordings/NAME-DATE.wattscope)")
    r.add_argument("--jsonl", action="store_true",
                   help="print every event as a JSON line on stdout (the recording's vocabulary); progress goes to stderr")
    _fps_option(r)
    r.add_argument("--gpus", type=_gpus_arg, metavar="N[,N...]",
                   help="GPUs the model runs on and the energy is read from, as CUDA numbers them in this "
                        "shell (after CUDA_VISIBLE_DEVICES); several split the model (default: [run] gpus, else 0)")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="replay a recording on the live screen")
    rp.add_argument("recording")
    rp.add_argument("--headless", action="store_true", help="print the replayed run's tables instead of opening the app")
    rp.add_argument("--speed", type=float, default=1.0, help="playback speed (default 1.0)")
    _fps_option(rp)
    rp.set_defaults(func=cmd_replay)

    dm = sub.add_parser("demo", help="replay the bundled real H100 recording")
    dm.add_argument("--headless", action="store_true")
    dm.add_argument("--speed", type=float, default=4.0, help="playback speed (default 4.0)")
    _fps_option(dm)
    dm.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="serve the app of run, replay or demo to a web browser (textual-serve)",
                        description="Serve the app to web browsers; each page load starts its own "
                                    "`wattscope run|replay|demo ...` with the arguments given after it.")
    sv.add_argument("--host", default="localhost", help="address to listen on (default localhost)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    sv.add_argument("--public-url", help="the URL browsers reach the server at, where it differs from http://HOST:PORT")
    sv.add_argument("served", nargs=argparse.REMAINDER, metavar="run|replay|demo ...",
                    help="the command to serve and its arguments")
    sv.set_defaults(func=cmd_serve)

    e = sub.add_parser("export", help="export tables (or raw traces) from recordings or CSV tables")
    e.add_argument("inputs", nargs="+", help="recordings (.wattscope) or measurement CSV tables")
    e.add_argument("--format", default="md", choices=["md", "csv", "json", "parquet", "latex", "perfetto"],
                   help="perfetto: one recording as a Trace Event Format timeline (ui.perfetto.dev, chrome://tracing)")
    e.add_argument("--table", default="all", choices=["phases", "power", "findings", "crosscheck", "all", "serving"])
    e.add_argument("--per-request", action="store_true", help="with --table serving: one row per request")
    e.add_argument("--idle-subtracted", action="store_true", help="energies minus the idle baseline power over the same time")
    e.add_argument("--per-token", action="store_true", help="add energy per token columns")
    e.add_argument("--cv", action="store_true", help="add the repeat coefficient-of-variation columns")
    e.add_argument("--traces", action="store_true", help="export raw samples and windows (csv or parquet) into -o DIR")
    e.add_argument("-o", "--output", help="output file (a folder with --traces, and for --format csv --table all: one CSV per table); default stdout")
    e.set_defaults(func=cmd_export)

    pl = sub.add_parser("plot", help="draw a figure (png, svg, pdf) from recordings or CSV tables; needs wattscope[plot]")
    pl.add_argument("sources", nargs="+", help="recordings (.wattscope) or measurement CSV tables, side by side")
    pl.add_argument("-o", "--output", required=True, help="figure file: .png, .svg or .pdf")
    pl.add_argument("--kind", choices=["timeline", "ratios", "power", "serving"],
                    help="ratios to FP16 with their intervals, average power per phase, power over time, or J per "
                         "token against the rate (default: serving for serving recordings, else ratios)")
    pl.add_argument("--rate", default="offered", choices=["offered", "achieved"],
                    help="with --kind serving: the rate on the x axis (default offered)")
    pl.add_argument("--config", help="with --kind timeline: only this configuration (its id, e.g. Qwen2-1.5B/b1/int8)")
    pl.set_defaults(func=cmd_plot)

    c = sub.add_parser("compare", help="two sources side by side: ratios and findings (two serving recordings: "
                                       "J per token, B/A with its interval)")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--format", default="md", choices=["md", "text", "json"])
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("init", help="write a starter config: every key with its default and meaning")
    i.add_argument("path", nargs="?", default="wattscope.toml", help="file to write (default wattscope.toml; never overwritten)")
    i.set_defaults(func=cmd_init)

    _serve_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except WattscopeError as e:
        print(f"wattscope: error: {printable(e.message)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # A file the user named cannot be read or written (a directory in the way, no
        # permission, disk full): bad input, said in one line rather than a traceback.
        where = f"{e.filename}: " if e.filename else ""
        print(printable(f"wattscope: error: {where}{e.strerror or e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
