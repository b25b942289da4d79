"""``python -m pipeline SOURCE... [options]``: transcribe files, URLs or standard input.

One input: the transcript alone goes to stdout (or ``--output``). Several inputs: one file
each in ``--output-dir``, named after the input; the model loads once and one pipeline
serves them all, in order; a failed input is reported and the run goes on. Logs, the
progress bar (on a terminal) and the profile go to stderr.

Everything that can be checked before audio is read is checked first (issue 10): the
model, the device, the language against the model, where the output goes. A wrong option
gives one line ``error: ...`` and exit code 2 within seconds.

Exit codes: 0 success; 1 an input failed (with several inputs: at least one did); 2 bad
options; 130 interrupted (Ctrl-C; the transcript of the audio finished so far is written,
JSON says ``"partial": true``; a second Ctrl-C, or a run still there 10 s after the first,
is torn down at once).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline import logs
from pipeline.config import Job, PipelineConfig, env_batch_size, env_model
from pipeline.errors import PipelineError, StageDied, input_message
from pipeline.types import TASKS, DecodeOptions
from stages.quality import QualityConfig

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}
INTERRUPT_JOIN_S = 0.3  # after Ctrl-C, stages get this long to leave before SIGTERM
INTERRUPT_DEADLINE_S = 10.0  # after Ctrl-C, the run is torn down at once if still going

EPILOG = """\
several inputs: give --output-dir DIR; each transcript goes to DIR/NAME.EXT (NAME from
the input's file name, EXT from --format: txt, json, srt, vtt). The model loads once; a
failed input is reported and the others go on (exit code 1 at the end, with a summary).

exit codes: 0 done; 1 an input failed; 2 bad options (nothing was read); 130 interrupted
(Ctrl-C writes the transcript of the audio finished so far; JSON has "partial": true; a
second Ctrl-C exits at once, and so does a run still there 10 s after the first).

environment: MODEL_ID, MODEL_BATCH_SIZE, MAX_AUDIO_S (longest audio accepted, seconds;
default 43200 = 12 h), HF_HUB_OFFLINE=1 where there is no network.
"""


class UsageError(ValueError):
    """A bad option or input name: one line, exit code 2, nothing read yet."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, as for every other bad option: argparse's usage block (13 lines) would
        # bury the message; --help still shows it.
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.formats import FORMATS

    p = _Parser(
        prog="python -m pipeline",
        description="Transcribe long audio with Whisper through a streaming, batched pipeline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="audio or video file, http(s) URL, or - for standard input; several "
                        "at once with --output-dir")
    p.add_argument("--model", default=None,
                   help="tiny.en, base or small (pip-installed weights), a checkpoint "
                        "directory (transformers or CTranslate2), or a hub id "
                        "(default: $MODEL_ID, else openai/whisper-large-v3-turbo)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="decoder slots: windows decoded at once (default: $MODEL_BATCH_SIZE, else 16)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="model precision (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--language", default=None,
                   help="language code or name, e.g. en or German (default: detect)")
    p.add_argument("--task", default="transcribe", choices=TASKS)
    p.add_argument("--format", default="text", choices=FORMATS, dest="fmt")
    p.add_argument("--word-timestamps", action="store_true",
                   help="time every word (start, end, probability; in --format json)")
    p.add_argument("--max-line-chars", type=int, default=None, metavar="N",
                   help="srt/vtt: cues of whole words, at most N characters each "
                        "(turns on --word-timestamps)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text that conditions every window: names, spellings, style")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature of each window's first decode, 0 to 1 "
                        "(default 0: greedy; the fallback goes on above it)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", "-o", default=None, metavar="FILE",
                     help="write the transcript to FILE, not stdout (one input)")
    out.add_argument("--output-dir", "-d", default=None, metavar="DIR",
                     help="write each input's transcript to DIR/NAME.EXT (created if missing)")
    p.add_argument("--stall-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up on a download that sends nothing, or less than 64 KiB, for this long (default: 30)")
    p.add_argument("--plain", action="store_true",
                   help="decode each window once and keep what the model said: no re-decodes, "
                        "filters or energy gate (to measure what they add)")
    p.add_argument("--profile", action="store_true", help="print a stage-level profile on stderr")
    p.add_argument("--backend", default="whisper", help=argparse.SUPPRESS)  # module:Class double
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary; only errors on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging on stderr (-v info, -vv debug)")
    return p


# ------------------------------------------------------------------ checks before a run


@dataclass(frozen=True)
class Input:
    source: str
    label: str  # how messages name it
    output: str | None  # None: stdout


def _label(source: str) -> str:
    from stages.source import STDIN_LABEL, source_label

    return STDIN_LABEL if source == "-" else source_label(source)


def _output_name(source: str) -> str:
    """The NAME of DIR/NAME.EXT for an input: its file name without the extension; for a
    URL without a file name in its path, the host (whole: its dots are no extension)."""
    if source == "-":
        return "stdin"
    if "://" in source:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(source)
        tail = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
        if tail:
            return Path(tail).stem or tail
        return parts.hostname or "download"
    return Path(source).stem or Path(source).name


def _writable_dir(folder: Path, what: str) -> None:
    if not folder.exists():
        raise UsageError(f"{what}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is not a folder")
    try:  # os.access says yes to root everywhere; creating a file is the real test
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in the folder {folder} ({exc.strerror})") from None


def _check_output(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"-o {path}: is a directory; give a file name (or --output-dir DIR)")
    target = _replaced_file(path)
    if target is None:  # a FIFO or a device (/dev/stdout): written into, its folder untouched
        if not os.access(path, os.W_OK):
            raise UsageError(f"-o {path}: cannot write to it")
        return
    _writable_dir(target.parent, f"-o {path}")
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"-o {path}: the file exists and is not writable")


def _inputs(args) -> list[Input]:
    sources = args.sources
    if sources.count("-") > 1:
        raise UsageError("- (standard input) can be given only once")
    if len(sources) > 1 and not args.output_dir:
        raise UsageError(f"{len(sources)} inputs: give --output-dir DIR for their transcripts")
    if args.output:
        _check_output(args.output)
        return [Input(sources[0], _label(sources[0]), args.output)]
    if not args.output_dir:
        return [Input(sources[0], _label(sources[0]), None)]
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out}: is a file, not a folder")
    if out.exists():  # a missing one is created by prepare, once every check has passed
        _writable_dir(out, f"--output-dir {out}")
    ext = EXTENSIONS[args.fmt]
    seen: dict[str, str] = {}
    inputs = []
    for s in sources:
        target = str(out / f"{_output_name(s)}.{ext}")
        if target in seen:
            raise UsageError(f"{seen[target]} and {s} would both be written to {target}")
        seen[target] = s
        inputs.append(Input(s, _label(s), target))
    return inputs


def _check_device(device: str | None) -> None:
    if device is None or not device.startswith("cuda"):
        return
    import torch  # only when asked for: the CLI's driver does not need torch otherwise

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise UsageError(
            f"--device {device}: there is no such device ({torch.cuda.device_count()} CUDA "
            "device(s): cuda:0 ...)"
        )


def _check_language(args, english_only: bool | None, model: str) -> str | None:
    from pipeline.languages import codes_list, language_code

    language = None
    if args.language is not None:
        try:
            language = language_code(args.language)
        except ValueError:
            raise UsageError(
                f"--language {args.language[:40]}: not a Whisper language; use a code: "
                f"{codes_list()}"
            ) from None
    if english_only:
        if language not in (None, "en"):
            raise UsageError(
                f"--language {args.language}: model {model} is English-only; use a "
                "multilingual one (e.g. --model base or small)"
            )
        if args.task == "translate":
            raise UsageError(
                f"--task translate: model {model} is English-only (it cannot translate); use a "
                "multilingual one (e.g. --model base or small)"
            )
    return language


def _config(args) -> PipelineConfig:
    kw = dict(
        model=args.model or env_model(),
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size if args.batch_size is not None else env_batch_size(),
        inherit_stdin="-" in args.sources,
        stall_timeout_s=args.stall_timeout,
        log_level=_level(args),
    )
    if args.plain:
        kw["quality"] = QualityConfig(enabled=False)
    return PipelineConfig(**kw)


def _level(args) -> str:
    if args.quiet and not args.verbose:
        return "ERROR"
    return ("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)]


def prepare(args) -> tuple[PipelineConfig, DecodeOptions, list[Input]]:
    """Every check that needs no audio; raises UsageError (one line)."""
    from pipeline.weights import ModelResolveError, check_model

    try:
        cfg = _config(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    inputs = _inputs(args)
    _check_device(cfg.device)
    english_only = None
    if cfg.backend == "whisper":
        try:
            english_only = check_model(cfg.model).english_only
        except ModelResolveError as exc:
            raise UsageError(str(exc)) from None
    language = _check_language(args, english_only, cfg.model)
    try:
        options = DecodeOptions(
            language=language,
            task=args.task,
            word_timestamps=args.word_timestamps or args.max_line_chars is not None,
            prompt=args.prompt,
            temperature=args.temperature,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.max_line_chars is not None:
        if args.fmt not in ("srt", "vtt"):
            raise UsageError("--max-line-chars needs --format srt or vtt")
        from pipeline.formats import MAX_LINE_CHARS

        lo, hi = MAX_LINE_CHARS
        if not lo <= args.max_line_chars <= hi:
            raise UsageError(f"--max-line-chars must be from {lo} to {hi}, not {args.max_line_chars}")
    if args.output_dir:
        _make_output_dir(Path(args.output_dir))
    return cfg, options, inputs


def _make_output_dir(out: Path) -> None:
    """Create --output-dir last of all checks: a refused run leaves no folder behind."""
    if out.exists():
        return
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"--output-dir {out}: cannot create it: {exc.strerror}") from None
    _writable_dir(out, f"--output-dir {out}")


# ------------------------------------------------------------------------- the run


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replaced_file(path: str) -> Path | None:
    """The regular file that ``-o path`` replaces: the path itself, or the file a symlink
    resolves to (the link stays). None where ``path`` is to be written into instead: an
    existing FIFO or device (/dev/null), or a descriptor's link (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N): even when it leads to a regular file (stdout redirected to one),
    replacing that file would undo the shell's ``>>`` and cut off whoever holds it open."""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel's limit on links followed
        p = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if p.startswith("/proc/") and os.path.exists(p):
            return None
        if not os.path.islink(p):
            break
        p = os.path.join(os.path.dirname(p), os.readlink(p))
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return None
    except FileNotFoundError:  # not there yet (or a dangling link: its file is created)
        pass
    except OSError:  # a loop of links, a folder that cannot be searched: open() says why
        return None
    return Path(p)


def write_output(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a hidden temporary file in the same
    folder, renamed into place; removed on any failure (no stray ``.part`` files). A
    symlink's file is replaced (the link stays); a FIFO or device is written into."""
    target = _replaced_file(path)
    if target is None:  # appending, not truncating: /dev/stdout may be a shell's >> file
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    try:  # an existing file keeps its permissions (a 0600 transcript stays private)
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _emit(inp: Input, transcript, fmt: str, max_line_chars: int | None = None) -> None:
    from pipeline.formats import format_transcript

    text = format_transcript(transcript, fmt, max_line_chars=max_line_chars)
    if inp.output:
        write_output(inp.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def partial_transcript(windows, options: DecodeOptions, model: str):
    """The transcript of the audio finished before an interrupt: the windows done in a row
    from the first (later ones that happened to finish are not "so far")."""
    from pipeline.formats import Transcript
    from pipeline.stitch import majority_language, stitch, transcript_text

    done = []
    for w in sorted(windows, key=lambda w: w.index):
        if w.index != len(done):
            break
        done.append(w)
    duration = done[-1].start + done[-1].valid if done else 0.0
    segments = stitch(done, duration=duration)
    return Transcript(
        text=transcript_text(segments),
        language=options.language or majority_language(done),
        duration=round(duration, 3),
        model=model,
        segments=tuple(segments),
        timings={},
        partial=True,
    )


class Progress:
    """A tqdm bar on stderr for one input: audio seconds transcribed of the total (known
    once decoding has finished, which is early) and the speed as a real-time factor.
    Callable as the pipeline's ``progress(done_s, decoded_s, decode_finished)``. Made when
    the job is submitted, not at its first result: the speed counts the wait for the model
    and the first window too, as the transcript's ``timings.rtfx`` does."""

    def __init__(self, label: str, stream=None, position: int | None = None):
        from tqdm import tqdm

        stream = stream or sys.stderr
        try:  # a terminal that reports no size (0 x 0) would get no bar at all
            size = os.get_terminal_size(stream.fileno())
            ncols, nrows = size.columns or 100, size.lines or 24
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            ncols, nrows = 100, 24
        # smoothing=0: the time left from the average speed since the start, the one shown
        self.bar = tqdm(
            total=None, desc=label if len(label) <= 40 else "..." + label[-37:], unit="s",
            file=stream, leave=True, ncols=ncols, nrows=nrows, position=position, smoothing=0,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} s audio "
                       "[{elapsed}<{remaining}{postfix}]",
        )  # fmt: skip

    def __call__(self, done_s: float, decoded_s: float | None, decode_finished: bool) -> None:
        count = done_s
        if decode_finished and decoded_s:
            # The windows' shares can pass the decoded total by a rounding (tqdm then
            # warned and showed a negative time left): the count never passes the total,
            # shown to a tenth of a second, and the last call (all of it) fills the bar.
            done_s = min(done_s, decoded_s)
            self.bar.total = round(decoded_s, 1)
            count = self.bar.total * done_s / decoded_s
        wall = self.bar.format_dict["elapsed"]  # the bar's clock: since the job started
        if wall > 0:
            self.bar.set_postfix_str(f"{done_s / wall:.1f}x real time", refresh=False)
        self.bar.update(count - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class _NoProgress:
    def __call__(self, *a) -> None:
        pass

    def close(self) -> None:
        pass


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM during a run.

    The first: remembered in ``event`` (``Pipeline.run_jobs`` raises KeyboardInterrupt
    when it is set, should the one raised here be lost: see ``Pipeline.wait``), a deadline
    armed, and KeyboardInterrupt raised: the run is cancelled, the transcript of the audio
    finished so far written, the stages stopped in order. A second signal, or the deadline
    (``deadline_s``) passing with the process still there, tears everything down at once:
    stages SIGKILLed, segments unlinked, exit code 130. A Ctrl-C ends the run within the
    deadline whatever the run was doing when it came, or whatever its shutdown waits on.
    """

    def __init__(self, deadline_s: float = INTERRUPT_DEADLINE_S, stream=None):
        self.event = threading.Event()
        self.deadline_s = deadline_s
        self.pipe = None  # the Pipeline to tear down, once there is one
        self._stream = stream
        self._timer: threading.Timer | None = None
        self._previous: dict = {}

    def install(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """The run is over: disarm the deadline and give the signals back their handlers.
        For a caller of ``main`` in its own process (a script, a test), whose process must
        not be ended ``deadline_s`` after an interrupted run returned."""
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame):
        if self.event.is_set():
            self._now(wait=False)
        self.event.set()
        self._timer = threading.Timer(self.deadline_s, self._expired)
        self._timer.daemon = True
        self._timer.start()
        raise KeyboardInterrupt()

    def _expired(self) -> None:
        print(f"warning: still running {self.deadline_s:.0f} s after the interrupt: stopping at once",
              file=self._stream or sys.stderr)
        self._now(wait=True)

    def _now(self, wait: bool) -> None:
        """Tear down and exit 130. From the signal handler (``wait`` False) through
        SystemExit, so that the output files are closed; from the deadline's thread
        through ``os._exit``: the main thread is stuck and nothing else would end it."""
        if not wait:  # the main thread's handler (a signal's disposition is set only there)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.pipe is not None:
            self.pipe.kill()
        stream = self._stream or sys.stderr
        print("error: interrupted", file=stream)
        if not wait:
            raise SystemExit(EXIT_INTERRUPTED)
        with contextlib.suppress(Exception):
            stream.flush()
        os._exit(EXIT_INTERRUPTED)


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logs.setup(_level(args), role="driver")
    try:
        cfg, options, inputs = prepare(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    interrupts = Interrupts().install()
    try:
        return _run(args, cfg, options, inputs, show_progress(args, sys.stderr), interrupts)
    finally:
        interrupts.uninstall()


def show_progress(args, stream) -> bool:
    """A progress bar only on a terminal, and not with --quiet."""
    return not args.quiet and stream.isatty()


def _readable(inp: Input) -> str | None:
    """Why a local input cannot be read (checked before the pipeline starts), or None."""
    if inp.source == "-":
        try:
            os.fstat(0)
        except OSError:  # started with stdin closed (`<&-`, some daemons and cron setups)
            return "standard input is closed"
        return None
    if "://" in inp.source:
        return None
    if not os.path.exists(inp.source):
        return "no such file"
    if os.path.isdir(inp.source):
        return "is a directory, not an audio file"
    return None


def _run(args, cfg, options, inputs, progress: bool, interrupts: Interrupts | None = None) -> int:
    """All readable inputs go to one pipeline as one ``run_jobs`` call: the model loads
    once, the inputs flow through the stages one after another, and the infer stage
    decodes the windows of all of them in the same decoder slots. A failed input is
    reported and the others go on."""
    from pipeline.runtime import Pipeline

    failed: list[str] = []
    todo: list[Input] = []
    for inp in inputs:
        why = _readable(inp)
        if why:
            print(f"error: {inp.label}: {why}", file=sys.stderr)
            failed.append(inp.label)
        else:
            todo.append(inp)
    bars: dict[int, Progress] = {}

    def on_progress(i, done_s, decoded_s, decode_finished):
        bar = bars.get(i)  # the dispatcher's thread: close_bars may have run
        if bar is not None:
            bar(done_s, decoded_s, decode_finished)

    def close_bars():
        for b in bars.values():
            b.close()
        bars.clear()

    done = 0
    # Errors of inputs the stages ran are printed once the stages are gone, so the line
    # "error: ..." is the last a user (or a script reading stderr) sees, even with -vv
    # (a stage could otherwise log a last line after it).
    errors: list[str] = []
    pipe = Pipeline(cfg)
    if interrupts is not None:
        interrupts.pipe = pipe
    try:
        results = []
        if todo:
            jobs = [Job(inp.source, options, profile=args.profile, label=inp.label) for inp in todo]
            if progress:  # from the start (at 0 while the model loads): all jobs start now
                bars.update((i, Progress(inp.label, position=i)) for i, inp in enumerate(todo))
            try:
                results = pipe.run_jobs(jobs, progress=on_progress,
                                        interrupt=interrupts.event if interrupts else None)
            except StageDied as exc:  # the pipeline, not an input, failed: all of them did
                close_bars()
                errors.append(f"error: {exc}")
                failed.extend(inp.label for inp in todo)
            close_bars()
        for inp, res in zip(todo, results):
            if isinstance(res, PipelineError):
                errors.append(f"error: {input_message(inp.label, str(res))}")
                failed.append(inp.label)
                continue
            try:
                _emit(inp, res.transcript, args.fmt, args.max_line_chars)
            except OSError as exc:
                errors.append(f"error: {inp.output}: cannot write: {exc.strerror or exc}")
                failed.append(inp.label)
                continue
            done += 1
            if args.profile:
                from pipeline.profile import format_profile, profile_from_outcome

                sys.stderr.write(format_profile(profile_from_outcome(res)))
    except KeyboardInterrupt as exc:
        close_bars()
        runs = getattr(exc, "partial_runs", None) or []
        model = (pipe.model_info or {}).get("model", cfg.model)
        for inp, windows in zip(todo, runs):
            if not windows and len(todo) > 1:
                continue  # nothing of it was finished: no file for it
            t = partial_transcript(windows, options, model)
            try:
                _emit(inp, t, args.fmt, args.max_line_chars)
            except OSError:
                continue
            if not args.quiet:
                print(f"{inp.label}: interrupted; wrote the transcript of the first "
                      f"{t.duration:.1f} s" + (f" to {inp.output}" if inp.output else ""),
                      file=sys.stderr)
        pipe.close(join_timeout=INTERRUPT_JOIN_S)
        for line in errors:
            print(line, file=sys.stderr)
        errors.clear()
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        pipe.close()
        for line in errors:
            print(line, file=sys.stderr)
    if len(inputs) > 1 and not args.quiet:
        where = f" in {args.output_dir}" if args.output_dir else ""
        print(f"{done} of {len(inputs)} inputs transcribed{where}"
              + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return EXIT_FAILED if failed else 0
