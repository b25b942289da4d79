"""The command line as a newcomer meets it (issue 10): options checked before any audio is
read (one line, exit 2), quick hub failures, several inputs in one run, a progress bar on
a terminal only, Ctrl-C that keeps what was done, no stray files, no pointless warnings."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests import media, procs

REPO = Path(__file__).resolve().parents[1]
SLOW = "tests.slow_tone:SlowTone"


def cli(*args, env=None, timeout=60, unset=()):
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in unset:
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, timeout=timeout)


def one_error_line(r) -> str:
    err = r.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    return media.write_wav(d / "a.wav", media.tone(440, 1.0))


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Two tone-coded readings (about 70 s and 40 s) for the tone test double."""
    from tests.tone_backend import make_tone_speech

    d = tmp_path_factory.mktemp("tones")
    out = []
    for name, words, seed in (("first", 100, 1), ("second", 60, 2)):
        audio, _ = make_tone_speech(words, seed=seed)
        out.append(media.write_wav(d / f"{name}.wav", audio))
    return out


def _installed(name):
    from pipeline.weights import ModelResolveError, check_model

    try:
        check_model(name)
    except ModelResolveError:
        pytest.skip(f"{name} weights not installed")


# ----------------------------------------------------------- 1: checks before reading audio


def test_model_that_is_not_a_model_fails_up_front(wav, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    for model, expect in (
        (tmp_path / "missing", "no such directory"),
        (tmp_path / "notes", "neither a transformers checkpoint"),
        ("openai/whisper-nonexistent", "hub"),
    ):
        r = cli(wav, "--model", model)
        assert r.returncode == 2, r.stderr
        line = one_error_line(r)
        assert str(model) in line and expect in line, line
    assert "--model DIR" in line and "MODEL_ID" in line  # the hub id: what to do instead


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has CUDA"
)
def test_cuda_where_there_is_none(wav):
    r = cli(wav, "--device", "cuda", "--model", "tiny.en")
    assert r.returncode == 2
    line = one_error_line(r)
    assert "--device cuda" in line and "no CUDA" in line


def test_unknown_language_lists_each_code_once(wav):
    r = cli(wav, "--language", "xx", "--model", "tiny.en")
    assert r.returncode == 2  # was 1
    line = one_error_line(r)
    codes = line.split("use a code: ", 1)[1].split(", ")
    assert len(codes) == len(set(codes)) and "en" in codes and "yue" in codes, line


@pytest.mark.parametrize("extra,expect", [(("--language", "de"), "--language de"),
                                          (("--task", "translate"), "--task translate")])
def test_english_only_model_refuses_other_languages(wav, extra, expect):
    _installed("tiny.en")
    r = cli(wav, "--model", "tiny.en", *extra)
    assert r.returncode == 2
    line = one_error_line(r)
    assert expect in line and "English-only" in line and "base" in line, line


def test_english_only_is_read_from_a_checkpoint(real_tiny_dir):
    """A transformers directory of an English-only model (vocabulary of 51864) is known
    as one, whatever its name."""
    from pipeline.weights import check_model

    assert check_model(real_tiny_dir).english_only is True


@pytest.mark.parametrize("case", ["missing folder", "a directory", "unwritable", "two inputs",
                                  "output-dir is a file"])
def test_output_that_cannot_be_written_fails_up_front(wav, tmp_path, case):
    (tmp_path / "file.txt").write_text("x")
    args = {
        "missing folder": ("-o", tmp_path / "nope" / "out.txt"),
        "a directory": ("-o", tmp_path),
        "unwritable": ("-o", "/proc/out.txt"),  # root may write anywhere else
        "two inputs": (wav,),
        "output-dir is a file": ("--output-dir", tmp_path / "file.txt"),
    }[case]
    r = cli(wav, "--model", "tiny.en", *args)
    assert r.returncode == 2
    line = one_error_line(r)
    assert ".part" not in line
    assert {"missing folder": "does not exist", "a directory": "is a directory",
            "unwritable": "cannot write", "two inputs": "--output-dir",
            "output-dir is a file": "not a folder"}[case] in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_model_that_fails_to_load_is_one_line_without_v(tones, tmp_path):
    """It passes the up-front check (a checkpoint directory) but cannot load: one line
    naming the stage and the model, no doubled tracebacks (they come back with -v)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (broken / "model.safetensors").write_bytes(b"garbage")
    r = cli(*tones, "--model", broken, "--output-dir", tmp_path / "out")
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: infer stage failed: cannot load model"), err
    assert lines[1].startswith("0 of 2 inputs transcribed")  # the second was not tried again


# ----------------------------------------------------------------------- 2: hub failures


def test_unreachable_hub_fails_quickly_with_advice(wav):
    r = cli(wav, "--model", "openai/whisper-tiny", unset=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"),
            env={"HF_ENDPOINT": "http://127.0.0.1:9"}, timeout=15)
    assert r.returncode == 2
    line = one_error_line(r)
    assert "openai/whisper-tiny" in line and "--model DIR" in line and "MODEL_ID" in line, line


def test_silent_hub_is_given_up_on(monkeypatch):
    """A hub that accepts the connection and never answers: the check gives up after its
    timeout (12 s in the CLI; 1 s here) instead of transformers' minute of retries."""
    import socket

    from huggingface_hub import constants

    from pipeline.weights import ModelResolveError, check_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        with pytest.raises(ModelResolveError) as e:
            check_model("someone/some-model", hub_timeout=1.0)
    assert "someone/some-model" in str(e.value) and "did not answer" in str(e.value)


# --------------------------------------------------------------------- 3: several inputs


def test_several_inputs_one_model_one_pipeline(tones, tmp_path):
    bad = tmp_path / "page.mp3"
    bad.write_text("<html>not audio</html>\n" * 40)
    out = tmp_path / "out"
    r = cli(tones[0], bad, tones[1], tmp_path / "missing.wav", "--backend", SLOW, "--model", "tone",
            "--format", "srt", "--output-dir", out, "-vv", env={"SLOW_TONE_S": "0"})
    err = r.stderr.decode()
    assert r.returncode == 1, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["first.srt", "second.srt"]
    for name in ("first", "second"):
        assert "\nw1" in (out / f"{name}.srt").read_text()
    assert err.count("stage infer started") == 1 and err.count("ready on") == 1  # one load
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    by_input = {e.split(":")[1].strip(): e for e in errors}
    assert sorted(by_input) == sorted([str(bad), str(tmp_path / "missing.wav")]), errors
    assert "cannot decode" in by_input[str(bad)] and "no such file" in by_input[str(tmp_path / "missing.wav")]
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("2 of 4 inputs transcribed") and "page.mp3" in summary, summary
    assert "s audio" not in err and "%|" not in err  # stderr is no terminal: no progress bar


# ----------------------------------------------------------------- 4: progress on a TTY


def _run_on_tty(*args, env):
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, what it showed)."""
    master, slave = pty.openpty()
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    p = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=e,
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other end closed
                    break
                if not chunk:
                    break
                shown += chunk
            elif p.poll() is not None:
                break
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
        p.wait()
    return p.returncode, shown.decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_only(tones):
    code, shown = _run_on_tty(tones[1], "--backend", SLOW, "--model", "tone", "--batch-size", "1",
                              env={"SLOW_TONE_S": "0.05"})
    assert code == 0
    assert "second.wav" in shown and "s audio" in shown and "x real time" in shown, shown
    assert "100%" in shown, shown
    assert "0.0/? s audio" in shown, shown  # shown from the job's start, not its first window


def test_no_progress_bar_with_quiet_or_off_a_terminal():
    import io

    from pipeline.cli import build_parser, show_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    args = build_parser().parse_args(["a.wav"])
    assert show_progress(args, Tty()) and not show_progress(args, io.StringIO())
    assert not show_progress(build_parser().parse_args(["a.wav", "--quiet"]), Tty())


# ------------------------------------------------------------------------------ 5: Ctrl-C


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_writes_what_was_done_and_leaves_nothing(tones, tmp_path, presses):
    mark, out = tmp_path / "mark", tmp_path / "out.json"
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
             SLOW_TONE_MARK=str(mark), SLOW_TONE_S="2")
    p = subprocess.Popen([sys.executable, "-m", "pipeline", str(tones[0]), "--backend", SLOW,
                          "--model", "tone", "--batch-size", "1", "--format", "json", "-o", str(out)],
                         cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (mark.exists() and len(mark.read_text().split()) >= 1):
            assert time.monotonic() < deadline and p.poll() is None, "no window was finished"
            time.sleep(0.05)
        time.sleep(0.3)  # the window's result reaches the driver; the next one is in "generate"
        kids = [k.pid for k in psutil.Process(p.pid).children(recursive=True)]
        p.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.05)
            p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    err = err.decode()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err, err
    assert "leaked" not in err and "resource_tracker" not in err, err
    doc = json.loads(out.read_text())
    assert doc["partial"] is True and doc["segments"] and 0 < doc["duration"] < 60, doc["duration"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [k for k in kids if procs.alive(k)]
        shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"wsp{p.pid}_")]
        if not alive and not shm:
            break
        time.sleep(0.1)
    assert not alive and not shm, (alive, shm)


_STUCK_AFTER_CTRL_C = """
import sys, time
from pipeline.cli import Interrupts

class Pipe:  # stands in for the Pipeline: what a teardown does to it
    def kill(self):
        print("stages killed", file=sys.stderr, flush=True)

it = Interrupts(deadline_s=1.0).install()
it.pipe = Pipe()
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(60)  # a shutdown that never ends (a join, a lock, a lost exception)
"""


_INTERRUPTED_THEN_GOES_ON = """
import os, signal, sys, time
from pipeline.cli import Interrupts

it = Interrupts(deadline_s=0.5).install()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    pass
finally:
    it.uninstall()  # as main() does when a run returns, however it ended
time.sleep(1.5)  # past the deadline: the caller's process lives on
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
"""


def test_an_interrupted_run_leaves_its_caller_alive_with_its_own_handlers():
    """main() called in a caller's own process: after an interrupted run returns, the
    deadline armed by the Ctrl-C must not end the caller's process, and Ctrl-C is the
    caller's again (it was ended with exit code 130 a deadline after main returned)."""
    e = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_THEN_GOES_ON], cwd=REPO, env=e,
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"True\n"), r.stderr[-2000:]


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_ends_the_run_within_its_deadline_whatever_it_waits_on(presses):
    """However the orderly stop after Ctrl-C gets stuck, the process is gone soon after
    the deadline (or at once, on a second Ctrl-C), its stages torn down, exit code 130."""
    e = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", _STUCK_AFTER_CTRL_C], cwd=REPO, env=e,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.2)
            p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    lines = err.decode().strip().splitlines()
    assert p.returncode == 130, err
    assert lines[-2:] == ["stages killed", "error: interrupted"], lines
    assert (presses == 2) == ("still running" not in err.decode()), lines
    assert took >= (0.2 if presses == 2 else 1.0), took


def test_partial_transcript_is_the_windows_done_in_a_row():
    from pipeline.cli import partial_transcript
    from pipeline.types import DecodeOptions, Segment, TimedWindow, WindowResult

    def w(i, text):
        return TimedWindow(i, 25.0 * i, 25.0, WindowResult((Segment(0.0, 2.0, text),), "en"))

    t = partial_transcript([w(1, " b"), w(0, " a"), w(3, " d")], DecodeOptions(), "m")
    assert t.partial and t.text == "a b" and t.duration == 50.0
    assert t.to_dict()["partial"] is True
    from pipeline.formats import format_transcript

    assert json.loads(format_transcript(t, "json"))["partial"] is True


# --------------------------------------------------------------------- 6: no stray files


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from pipeline import cli as cli_mod

    target = tmp_path / "out.txt"
    target.write_text("the old transcript\n")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_mod.os, "replace", broken)
    with pytest.raises(OSError):
        cli_mod.write_output(str(target), "new text\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert target.read_text() == "the old transcript\n"
    monkeypatch.undo()
    cli_mod.write_output(str(target), "new text\n")
    assert target.read_text() == "new text\n" and oct(target.stat().st_mode & 0o077) != "0o0"


# ------------------------------------------------------------------- 7: quiet by default


def test_pointless_library_warnings_are_hidden(capsys, monkeypatch):
    from pipeline import logs

    # As in the infer stage: transformers' records propagate to our handler (imported
    # transformers otherwise keeps them on its own handler).
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    logs.setup("INFO")
    try:
        gen = logging.getLogger("transformers.generation.utils")
        gen.warning("`generation_config` default values have been modified to match model-specific defaults")
        gen.warning("The attention mask is not set and cannot be inferred from input because pad token is same as eos token.")
        gen.warning("A custom logits processor of type <class 'X'> has been passed to `.generate()`")
        gen.warning("something a user should see")
        err = capsys.readouterr().err
        assert "something a user should see" in err
        assert "generation_config" not in err and "attention mask" not in err and "logits processor" not in err
        logs.setup("DEBUG")  # -vv shows everything
        gen.warning("The attention mask is not set and cannot be inferred")
        assert "attention mask" in capsys.readouterr().err
    finally:
        logs.setup("WARNING")


# ------------------------------------------- words, cues by words, prompt, temperature (issue 11)


def _prepare(*argv):
    from pipeline.cli import build_parser, prepare

    return prepare(build_parser().parse_args([str(a) for a in argv]))


def test_word_prompt_temperature_flags(wav):
    _installed("tiny.en")
    _, opts, _ = _prepare(wav, "--model", "tiny.en", "--word-timestamps", "--prompt", "Kubernetes.",
                          "--temperature", "0.2")
    assert (opts.word_timestamps, opts.prompt, opts.temperature) == (True, "Kubernetes.", 0.2)
    _, opts, _ = _prepare(wav, "--model", "tiny.en", "--format", "srt", "--max-line-chars", "42")
    assert opts.word_timestamps  # cues cut by words need the words
    _, opts, _ = _prepare(wav, "--model", "tiny.en")
    assert (opts.word_timestamps, opts.prompt, opts.temperature) == (False, None, 0.0)


@pytest.mark.parametrize(
    "argv, expect",
    [
        (("--max-line-chars", "42"), "--max-line-chars needs --format srt or vtt"),
        (("--format", "vtt", "--max-line-chars", "3"), "--max-line-chars must be from 10"),
        (("--temperature", "1.5"), "temperature must be a number from 0 to 1"),
        (("--prompt", "x" * 5000), "prompt is longer than 4000 characters"),
    ],
)
def test_word_prompt_temperature_flags_refused(wav, argv, expect):
    from pipeline.cli import UsageError

    _installed("tiny.en")
    with pytest.raises(UsageError, match=re.escape(expect)):
        _prepare(wav, "--model", "tiny.en", *argv)


# ------------------------------------------------------------- the local CLI's audit fixes


def test_output_writes_through_a_symlink(tmp_path):
    from pipeline.cli import _check_output, write_output

    real = tmp_path / "keep" / "real.txt"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o600)
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    _check_output(str(link))
    write_output(str(link), "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert real.stat().st_mode & 0o777 == 0o600  # a private transcript stays private
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "link.txt"]
    assert os.listdir(real.parent) == ["real.txt"]  # no .part left anywhere


def test_output_writes_into_a_fifo(tmp_path):
    import threading

    from pipeline.cli import _check_output, write_output

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    _check_output(str(fifo))
    write_output(str(fifo), "through the pipe\n")
    reader.join(10)
    assert got == ["through the pipe\n"]
    assert fifo.is_fifo() and os.listdir(tmp_path) == ["pipe"]


def test_output_to_a_device_and_to_stdout(tmp_path):
    from pipeline.cli import _check_output, _replaced_file, write_output

    # First that they would be opened, not replaced: the tests may run as root.
    for dev in ("/dev/null", "/dev/stdout", "/dev/fd/1"):
        if os.path.exists(dev):
            assert _replaced_file(dev) is None, dev
    assert _replaced_file(str(tmp_path / "new.txt")) == tmp_path / "new.txt"
    _check_output("/dev/null")
    write_output("/dev/null", "nothing\n")
    assert Path("/dev/null").is_char_device()
    # /dev/stdout leads to the file stdout was redirected to: written through it, appended
    # (a shell's >> keeps what was there), the file not replaced.
    script = ("from pipeline.cli import _check_output, write_output; "
              "_check_output('/dev/stdout'); write_output('/dev/stdout', 'transcript\\n')")
    out = tmp_path / "log.txt"
    out.write_text("before\n")
    inode = out.stat().st_ino
    with open(out, "a") as f:
        subprocess.run([sys.executable, "-c", script], cwd=REPO, stdout=f, check=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.read_text() == "before\ntranscript\n" and out.stat().st_ino == inode
    assert os.listdir(tmp_path) == ["log.txt"]


def test_progress_rate_is_since_the_job_started(monkeypatch):
    """The rate is audio seconds per wall second since the bar (made when the job starts)
    began; the count never passes the total (was: 297.7x at the end of a file that went
    at 18x, a negative time left and tqdm's 'clamping frac' warning)."""
    import io
    import warnings

    import tqdm.std

    from pipeline.cli import Progress

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a TqdmWarning fails the test
        bar = Progress("talk.wav", stream=stream)  # the job starts: the model loads
        now[0] += 10.0
        bar(30.0, None, False)
        assert "3.0x real time" in bar.bar.postfix
        now[0] += 10.0
        bar(176.25, 176.188, True)  # a window's share passes the decoded total by a little
        assert bar.bar.n == bar.bar.total == 176.2 and "8.8x real time" in bar.bar.postfix
        bar.close()
    shown = stream.getvalue().split("\r")
    assert "0.0/? s audio" in shown[1], shown  # at once, before any window is done
    last = shown[-1]
    assert "100%" in last and "176.2/176.2 s audio" in last and "<00:00" in last, last
    assert "-" not in last.split("[", 1)[1], last  # no negative time left


@pytest.mark.parametrize("argv, expect", [
    (("--dtype", "float64"), "argument --dtype: invalid choice"),
    (("--batch-size", "abc"), "argument --batch-size: invalid int value"),
    (("--foo",), "unrecognized arguments: --foo"),
    (("-o", "{tmp}/x.txt", "-d", "{tmp}/subs"), "not allowed with argument"),
])
def test_bad_arguments_are_one_line(wav, tmp_path, argv, expect):
    r = cli(wav, *(a.format(tmp=tmp_path) for a in argv))
    assert r.returncode == 2 and r.stdout == b""
    line = one_error_line(r)
    assert expect in line and line.endswith(" (see --help)"), line
    assert os.listdir(tmp_path) == []
    h = cli("--help")
    assert h.returncode == 0 and b"usage: python -m pipeline" in h.stdout
    assert b"--output-dir" in h.stdout and b"exit codes" in h.stdout


def test_refused_run_creates_no_output_dir(wav, tmp_path):
    from pipeline.cli import UsageError

    subs = tmp_path / "subs" / "deeper"
    with pytest.raises(UsageError, match="would both be written to"):
        _prepare(wav, wav, "-d", subs)
    with pytest.raises(UsageError, match="not a Whisper language"):
        _prepare(wav, "-d", subs, "--backend", SLOW, "--model", "tone", "--language", "xx")
    assert os.listdir(tmp_path) == []
    _prepare(wav, "-d", subs, "--backend", SLOW, "--model", "tone")
    assert subs.is_dir()  # created once every check passed


def test_output_names_of_urls():
    from pipeline.cli import _output_name

    assert _output_name("http://127.0.0.1:8799/") == "127.0.0.1"
    assert _output_name("https://example.com") == "example.com"
    assert _output_name("https://x/a/talk.mp3") == "talk"
    assert _output_name("https://x/a/talk.mp3/?dl=1") == "talk"
    assert _output_name("https://host/%2F..%2Fsecret.mp3") == "secret"  # a file name, never a path


def test_url_names_keep_their_collision_check(tmp_path):
    from pipeline.cli import UsageError

    with pytest.raises(UsageError, match="would both be written to"):
        _prepare("https://a.example/talk.mp3", "https://b.example/talk.ogg", "-d", tmp_path,
                 "--backend", SLOW, "--model", "tone")
    _, _, inputs = _prepare("http://127.0.0.1:8799/", "http://127.0.0.2:8799/", "-d", tmp_path,
                            "--backend", SLOW, "--model", "tone")
    assert [Path(i.output).name for i in inputs] == ["127.0.0.1.txt", "127.0.0.2.txt"]
