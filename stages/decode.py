"""Decode stage core: bytes of any audio/video container -> 16 kHz mono float32 PCM.

ffmpeg does the demuxing, decoding, downmix and resampling, streaming: a thread feeds
the input blocks into its stdin while the generator reads fixed-size blocks of PCM from
its stdout (openai/whisper ``load_audio`` keeps ffmpeg's errors; unlike transformers'
``ffmpeg_read`` we never run it with ``-loglevel quiet``, so a failure can say why).

One container cannot be read from a pipe: MP4/M4A/MOV whose ``moov`` box (the index)
comes after ``mdat`` (the data), which is ffmpeg's default MP4 layout. For those the
input is spooled to a temporary file of our own and ffmpeg reads that file. Memory use
never grows with the input's length in either case.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator

import ffmpeg
import numpy as np

from pipeline.constants import PCM_DTYPE, PCM_ITEMSIZE, SAMPLE_RATE
from pipeline.errors import ResourceError, UserError

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SAMPLES = 160000  # 10 s at 16 kHz

# ffmpeg's output sample format, derived from the one dtype the pipeline uses.
assert PCM_DTYPE.kind == "f", "the pipeline's PCM must be floating point"
_WIRE_FORMAT = f"f{PCM_ITEMSIZE * 8}le"  # "f32le"
_WIRE_DTYPE = PCM_DTYPE.newbyteorder("<")  # what ffmpeg writes, whatever the host order

# -nostdin: never read keyboard commands (stdin carries the input, or nothing).
# -loglevel level+warning: errors and warnings stay on stderr, where we read them,
# each tagged "[error]"/"[warning]": ffmpeg may exit 0 after an error (a moov-less MP4
# from a pipe does), so the tags, not the exit code alone, tell a failure.
_GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+warning")

# Bytes of an ISO-BMFF head we look at before choosing pipe or spool. Boxes before
# moov/mdat are small (ftyp, free, wide); past this we spool, which is always correct.
SNIFF_LIMIT = 8 * 1024 * 1024
# Box types that may open an ISO-BMFF/QuickTime file (old .mov files lack ftyp).
_ISO_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"})

_STDERR_TAIL_LINES = 40  # lines of ffmpeg's stderr kept for the error message
_STDERR_MAX_LINE = 4096  # bytes; bounds memory even if ffmpeg writes no newline
_JOIN_TIMEOUT_S = 10.0
# ffmpeg lines that say "it failed" without saying why.
_GENERIC_LINES = (
    "conversion failed",
    "error opening input file",
    "error opening output file",
    "exiting normally",
    "error while filtering",
    "nothing was written into output file",
    "output file is empty",
    "last message repeated",
)
_LEVEL_RE = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\]\s*")
_ERROR_LEVELS = ("panic", "fatal", "error")
_NO_STREAM_MARKERS = ("does not contain any stream", "matches no streams")


class DecodeError(UserError):
    """ffmpeg could not turn the input into audio. ``str()`` is one line naming the input."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


TIMELINE_FILTER = "aresample=async=1:first_pts=0"  # see ffmpeg_command
# Mono stays mono, stereo stays stereo, more channels are mixed down to stereo by ffmpeg;
# the last mix to mono is ours (``downmix``).
LAYOUT_FILTER = "aformat=channel_layouts=mono|stereo"
# ffmpeg's own stereo -> mono mix is L * 1/sqrt(2) + R * 1/sqrt(2), in float32: ``downmix``
# computes the same, sample for sample.
_MIX = np.float32(0.70710677)
# A block whose side (L - R) carries this many times the energy of its mid (L + R) has
# channels that cancel in the mix: one of them is phase-inverted.
_INVERTED_RATIO = 10.0


def ffmpeg_command(input_target: str = "pipe:0") -> list[str]:
    """The ffmpeg command line: ``input_target`` -> a WAV stream on stdout.

    Output: little-endian float32 (PCM_DTYPE) samples at SAMPLE_RATE Hz, mono for mono
    input and stereo for anything else (ffmpeg mixes 5.1 and the like down to stereo); the
    WAV header says which, and ``downmix`` makes the stereo mono. ffmpeg picks the best
    audio stream and resamples it. Video, subtitles and data streams are dropped without
    being decoded.

    Sample 0 is the media's time 0: raw PCM has no timestamps, so audio that starts after
    the video (an MP4 or MKV whose audio begins 3 s in) or that has a gap in its timestamps
    is padded with silence where its timestamps say (``aresample=async=1:first_pts=0``),
    and subtitles line up with the video. Without it ffmpeg wrote the samples back to
    back and every cue came 3 s early. Audio whose timestamps run on without a break (every
    WAV, MP3, M4A, Ogg tried) comes out sample for sample the same.
    """
    stream = ffmpeg.input(input_target).output(
        "pipe:1",
        format="wav",
        acodec=f"pcm_{_WIRE_FORMAT}",
        af=f"{TIMELINE_FILTER},{LAYOUT_FILTER}",
        ar=SAMPLE_RATE,
        vn=None,
        sn=None,
        dn=None,
    )
    # Global options go first (compile() would otherwise append them after the output).
    return stream.compile(cmd=["ffmpeg", *_GLOBAL_ARGS])


def sniff_layout(head: bytes | bytearray, *, eof: bool = False) -> str | None:
    """Whether ffmpeg can read this input from a pipe, judged from its first bytes.

    head: the input's first bytes so far; eof: True when that is the whole input.
    Returns "stream" (not ISO-BMFF, or moov before mdat), "spool" (mdat before moov,
    or no decision within SNIFF_LIMIT bytes) or None (need more bytes).
    Walks top-level boxes by their headers only, so box bodies need not be present.
    """
    n = len(head)
    if n < 8:
        return "stream" if eof else None
    if bytes(head[4:8]) not in _ISO_FIRST_BOXES:
        return "stream"
    pos = 0
    while pos + 8 <= n:
        size = int.from_bytes(head[pos : pos + 4], "big")
        kind = bytes(head[pos + 4 : pos + 8])
        if kind == b"moov":
            return "stream"
        if kind == b"mdat":
            return "spool"
        header = 8
        if size == 1:  # 64-bit "largesize" follows the type
            if pos + 16 > n:
                break
            size = int.from_bytes(head[pos + 8 : pos + 16], "big")
            header = 16
        elif size == 0:
            # The box runs to the end of the file: no moov anywhere. Nothing to gain
            # from a file; let ffmpeg say what is wrong.
            return "stream"
        if size < header:
            return "stream"  # malformed: ffmpeg reports it
        pos += size
    if eof:
        return "stream"
    if n >= SNIFF_LIMIT:
        return "spool"
    return None


_prctl: Callable[..., int] | None = None
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent dies (Linux).

    So ffmpeg cannot outlive a decode stage that was SIGKILLed (no finally runs then).
    Note: the kernel ties this to the *thread* that forked, so iterate decode_stream
    from a thread that outlives it (a stage process's main thread does).
    """
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:
        try:
            libc = ctypes.CDLL(
                ctypes.util.find_library("c") or "libc.so.6", use_errno=True
            )
            _prctl = libc.prctl
        except (OSError, AttributeError):
            logger.warning(
                "prctl unavailable: ffmpeg may outlive a killed decode stage"
            )
            return None
    prctl = _prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal would come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _read_full(pipe, buf: bytearray) -> int:
    """Fill ``buf`` from ``pipe``; returns the bytes read (less only at EOF)."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = pipe.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _collect_stderr(pipe, tail: collections.deque) -> None:
    """Keep the last lines of ffmpeg's stderr (bounded) and log them at debug level."""
    for raw in iter(lambda: pipe.readline(_STDERR_MAX_LINE), b""):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            tail.append(line)
            logger.debug("ffmpeg: %s", line)


def _ffmpeg_reason(lines: Iterable[str], hide: tuple[str, ...]) -> tuple[str, bool]:
    """The informative last line(s) of ffmpeg's stderr as one short line.

    Returns (reason, whether ffmpeg logged an error). Error-level lines are preferred
    over warnings; pointers, level tags and our own file names are taken out.
    """
    parsed: list[tuple[str | None, str]] = []
    for line in lines:
        level = None
        if m := _LEVEL_RE.search(line):
            level = m.group(1)
            line = line[: m.start()] + line[m.end() :]
        for target in hide:
            # "pipe:0: Invalid data found ..." -> "Invalid data found ..."
            line = line.replace(f"{target}: ", "").replace(target, "input")
        # "[mov,mp4,m4a @ 0x55d0c0] moov atom not found" -> "mov: moov atom not found"
        # (pointers differ per run; the first demuxer alias is enough to say who).
        line = re.sub(r"\[([^\]@,\s]+)[^\]@]*@ 0x[0-9a-fA-F]+\]\s*", r"\1: ", line)
        line = line.strip()
        if line and not line.lower().startswith(_GENERIC_LINES):
            parsed.append((level, line))
    errors = [text for level, text in parsed if level in _ERROR_LEVELS]
    picked: list[str] = []
    for text in reversed(errors or [text for _, text in parsed]):
        if text not in picked:
            picked.append(text)
        if len(picked) == 2:
            break
    reason = "; ".join(reversed(picked)) or "ffmpeg failed without a message"
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return reason, bool(errors)


class _Feeder(threading.Thread):
    """Writes ``head`` then the rest of ``blocks`` to ffmpeg's stdin, then closes it.

    An exception from ``blocks`` is kept in ``error`` (the generator re-raises it) and
    ffmpeg is killed at once, so no PCM from a half-fed input is mistaken for a result.
    """

    def __init__(self, proc: subprocess.Popen, head: bytes, blocks: Iterator, stop):
        super().__init__(name="decode-feeder", daemon=True)
        self.proc, self.head, self.blocks, self.stop = proc, head, blocks, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        stdin = self.proc.stdin
        try:
            data = self.head
            self.head = b""
            while True:
                if data:
                    try:
                        stdin.write(data)
                    except (OSError, ValueError):
                        # ffmpeg quit early (its exit status says why), or the
                        # generator was closed and killed it: stop feeding.
                        return
                if self.stop.is_set():
                    return
                try:
                    data = next(self.blocks)
                except StopIteration:
                    return
                # Anything the caller's iterator raises (even a BrokenPipeError of its
                # own) is its failure, not ffmpeg's: decode_stream re-raises it.
                except BaseException as exc:  # noqa: BLE001
                    self.error = exc
                    self.proc.kill()
                    return
        finally:
            try:
                stdin.close()
            except (OSError, ValueError):
                pass


UNKNOWN_WAV_SIZE = 0x7FFFF000  # a WAV data size from here up is a streaming placeholder


def declared_seconds(head: bytes | bytearray) -> float | None:
    """The duration a WAV or FLAC header declares, in seconds, or None (another format,
    a header not all in ``head``, or a size that means "unknown" in a streamed WAV: 0, or
    from 0x7FFFF000 up, where writers put their placeholders: 0xFFFFFFFF, 0x7FFFFFFF,
    0x7FFFF000; a real data chunk that large, 2 GiB, is stopped at the limit as it
    decodes instead). Read before decoding: through a pipe ffmpeg reports no duration, and a
    small file can declare hours (a 3 Hz WAV header declared 3 hours, issue 10)."""
    head = bytes(head)
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        order = "<" if head[:4] == b"RIFF" else ">"
        pos, byte_rate = 12, None
        while pos + 8 <= len(head):
            cid = head[pos : pos + 4]
            (size,) = struct.unpack(order + "I", head[pos + 4 : pos + 8])
            if cid == b"fmt " and pos + 20 <= len(head):
                (byte_rate,) = struct.unpack(order + "I", head[pos + 16 : pos + 20])
            elif cid == b"data":
                if not byte_rate or size == 0 or size >= UNKNOWN_WAV_SIZE:
                    return None
                return size / byte_rate
            pos += 8 + size + (size & 1)
        return None
    if head[:4] == b"fLaC" and len(head) >= 26 and head[4] & 0x7F == 0:  # STREAMINFO first
        info = int.from_bytes(head[18:26], "big")
        rate, total = info >> 44, info & ((1 << 36) - 1)
        return total / rate if rate and total else None
    return None


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


_WAV_HEADER_MAX = 1 << 16  # bytes of chunks before "data" we read through at most


def read_wav_header(pipe) -> int | None:
    """Read ffmpeg's WAV header from ``pipe`` up to the first sample; return its number of
    channels (1 or 2), or None when the stream ends first (ffmpeg failed: its stderr says
    why). Chunks other than "fmt " (ffmpeg's "LIST" of tags) are skipped; the sizes of
    RIFF and "data" are not read, since ffmpeg cannot fill them in on a pipe."""

    def read(n: int) -> bytes | None:
        buf = bytearray(n)
        return bytes(buf) if _read_full(pipe, buf) == n else None

    head = read(12)
    if head is None:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise DecodeError(f"ffmpeg wrote no WAV header ({head[:12]!r})")
    channels, seen = None, 12
    while True:
        chunk = read(8)
        if chunk is None:
            return None
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if kind == b"data":
            if channels is None:
                raise DecodeError("ffmpeg's WAV output has no format chunk")
            return channels
        seen += 8 + size + (size & 1)
        if seen > _WAV_HEADER_MAX:
            raise DecodeError("ffmpeg's WAV header is too long")
        body = read(size + (size & 1))
        if body is None:
            return None
        if kind == b"fmt ":
            tag, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if channels not in (1, 2) or rate != SAMPLE_RATE or bits != PCM_ITEMSIZE * 8 or tag not in (3, 0xFFFE):
                raise DecodeError(f"ffmpeg wrote {channels} channel(s) of {bits}-bit audio (format {tag:#x}) at "
                                  f"{rate} Hz, not float mono or stereo at {SAMPLE_RATE} Hz")  # fmt: skip


def downmix(frames: np.ndarray) -> tuple[np.ndarray, bool]:
    """(n, 2) float32 stereo -> ((n,) float32 mono, whether the channels cancel).

    Normally the mid, ``L/sqrt(2) + R/sqrt(2)``: what ffmpeg's own mix gives, sample for
    sample. Where one channel is the other turned upside down (a phase-inverted mic lead,
    a "wide" effect), the mid is near silence and the side (``L/sqrt(2) - R/sqrt(2)``)
    holds the speech: a block whose side carries 10 times the mid's energy is mixed as the
    side. ffmpeg, openai/whisper and faster-whisper all mix such audio to silence; the
    transcript was empty, with no error. Channels that are merely different (two speakers,
    one per side) have a side no louder than their mid and are mixed as before."""
    left, right = frames[:, 0] * _MIX, frames[:, 1] * _MIX
    mid = left + right
    side = left - right
    m = float(np.dot(mid.astype(np.float64), mid))
    d = float(np.dot(side.astype(np.float64), side))
    if d > _INVERTED_RATIO * m:
        return side, True
    return mid, False


def decode_stream(
    blocks: Iterable[bytes],
    *,
    name: str = "input",
    block_samples: int = DEFAULT_BLOCK_SAMPLES,
    max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Decode the byte blocks of one input into mono PCM at SAMPLE_RATE.

    blocks: the input's bytes, in order (any bytes-like blocks, any sizes).
    name: how messages name the input (a safe label, e.g. ``source_label(...)``).
    Yields ``(block_samples,)`` arrays of PCM_DTYPE in [-1, 1], the last one shorter.

    max_seconds: refuse input whose header declares more audio than this (before ffmpeg
    starts), and stop with an error when the decoded audio runs past it (None: no cap).

    Raises DecodeError (one line naming the input and ffmpeg's reason) when the input is
    empty, has no audio stream, is too long, or ffmpeg fails. An exception raised by ``blocks``
    propagates unchanged, after ffmpeg is killed. ffmpeg never outlives the generator.
    """
    if block_samples < 1:
        raise ValueError("block_samples must be at least 1")
    it = iter(blocks)

    # Read just enough of the head to know whether ffmpeg can take it from a pipe.
    # For anything but MP4-family input that is the first 8 bytes.
    head = bytearray()
    layout = None
    exhausted = False
    while layout is None:
        try:
            block = next(it)
        except StopIteration:
            exhausted = True
            layout = sniff_layout(head, eof=True)
            break
        head += block
        layout = sniff_layout(head)
    if exhausted and not head:
        raise DecodeError(f"{name} is empty (no bytes)")
    declared = declared_seconds(head)
    if max_seconds is not None:
        if declared is not None and declared > max_seconds:
            raise DecodeError(
                f"{name}: its header declares {_hms(declared)} of audio, more than the limit "
                f"of {_hms(max_seconds)} (MAX_AUDIO_S)"
            )
    max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)

    spool_path = None
    spool_fd = None
    proc = None
    feeder = None
    stop = threading.Event()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
    stderr_thread = None
    try:
        if layout == "spool":
            try:
                spool_fd, spool_path = tempfile.mkstemp(prefix="decode-", suffix=".mp4")
            except OSError as exc:
                raise ResourceError(f"cannot decode {name}: cannot make a temporary file to spool to: "
                                    f"{exc.strerror or exc}") from exc  # fmt: skip
            # Unlinked at once, used through its descriptor: however the process ends (a
            # Ctrl-C mid-spool ends the stage before this thread unwinds), nothing is left
            # in /tmp; the space goes with the last descriptor.
            os.unlink(spool_path)
            logger.info("%s: moov box after mdat, spooling to %s (unlinked)", name, spool_path)
            _spool(spool_fd, head, () if exhausted else it, name)
            del head
            # ffmpeg opens /dev/fd/N afresh (Linux reopens the file: its own offset, so
            # it can seek); "file:" so that no character is taken for a protocol name.
            spool_path = f"/dev/fd/{spool_fd}"
            cmd = ffmpeg_command("file:" + spool_path)
        else:
            cmd = ffmpeg_command("pipe:0")
        logger.debug("running %s", cmd)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL if spool_path else subprocess.PIPE,
                pass_fds=(spool_fd,) if spool_fd is not None else (),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent_fn(),
                # Own session: a terminal's Ctrl-C goes to our stages, which then stop
                # ffmpeg, instead of ffmpeg failing on its own in the middle.
                start_new_session=True,
            )
        except OSError as exc:
            raise DecodeError(
                f"cannot decode {name}: cannot run ffmpeg: {exc}"
            ) from exc
        stderr_thread = threading.Thread(
            target=_collect_stderr,
            args=(proc.stderr, stderr_tail),
            name="decode-stderr",
            daemon=True,
        )
        stderr_thread.start()
        if not spool_path:
            feeder = _Feeder(proc, bytes(head), iter(()) if exhausted else it, stop)
            del head
            feeder.start()

        channels = read_wav_header(proc.stdout) or 1  # None: ffmpeg failed; said below
        frame_bytes = block_samples * PCM_ITEMSIZE * channels
        total = 0
        inverted = False
        while True:
            buf = bytearray(frame_bytes)
            got = _read_full(proc.stdout, buf)
            if feeder is not None and feeder.error is not None:
                break
            n = got // (PCM_ITEMSIZE * channels)
            if n:
                pcm = np.frombuffer(buf, dtype=_WIRE_DTYPE, count=n * channels)
                if _WIRE_DTYPE != PCM_DTYPE:
                    pcm = pcm.astype(PCM_DTYPE)
                if channels == 2:
                    pcm, cancel = downmix(pcm.reshape(n, 2))
                    if cancel and not inverted:
                        inverted = True
                        logger.warning("%s: its two channels cancel out when mixed (one is phase-inverted); "
                                       "transcribing their difference", name)  # fmt: skip
                elif n < block_samples and _WIRE_DTYPE == PCM_DTYPE:
                    pcm = (
                        pcm.copy()
                    )  # don't pin a whole block's buffer for a short tail
                # Resampling can overshoot a full-scale input slightly; the pipeline
                # promises [-1, 1].
                np.clip(pcm, -1.0, 1.0, out=pcm)
                if max_samples is not None and total + n > max_samples:
                    raise DecodeError(
                        f"{name}: longer than the limit of {_hms(max_seconds)} (MAX_AUDIO_S); "
                        "stopped there"
                    )
                total += n
                yield pcm
            if got < frame_bytes:
                break

        killed_here = False
        try:
            proc.wait(timeout=_JOIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed_here = True
        if feeder is not None:
            feeder.join(_JOIN_TIMEOUT_S)
            if feeder.error is not None:
                raise feeder.error
        stderr_thread.join(_JOIN_TIMEOUT_S)
        hide = (
            ("pipe:0", "file:" + spool_path, spool_path) if spool_path else ("pipe:0",)
        )
        if proc.returncode is not None and proc.returncode < 0 and not killed_here:
            # Killed (the OOM killer, an operator): its last words are no reason, and the
            # input is not at fault.
            sig = -proc.returncode
            try:
                signame = signal.Signals(sig).name
            except ValueError:
                signame = f"signal {sig}"
            raise ResourceError(f"cannot decode {name}: ffmpeg was killed by {signame}"
                                + (" (out of memory?)" if sig == signal.SIGKILL else ""))  # fmt: skip
        if proc.returncode != 0 or total == 0:
            reason, had_error = _ffmpeg_reason(stderr_tail, hide)
            no_stream = [
                line
                for line in stderr_tail
                if any(m in line for m in _NO_STREAM_MARKERS)
            ]
            if no_stream:
                why, _ = _ffmpeg_reason(no_stream[-1:], hide)
                raise DecodeError(f"{name} has no audio stream (ffmpeg: {why})")
            if proc.returncode != 0 or had_error:
                raise DecodeError(f"cannot decode {name}: {reason}")
            raise DecodeError(f"{name} contains no audio samples")
        got_s = total / SAMPLE_RATE
        reason, had_error = _ffmpeg_reason(stderr_tail, hide) if stderr_tail else ("", False)
        if declared is not None and got_s < declared - max(1.0, 0.01 * declared):
            # ffmpeg decodes what is there and says nothing: a copy cut short (an upload
            # that broke off) would pass for a short recording.
            logger.warning("%s: its header declares %s of audio, but the file holds only %s: "
                           "it looks cut short", name, _hms(declared), _hms(got_s))  # fmt: skip
        elif had_error:
            # Decoded, but ffmpeg said audio was lost (an MP4 cut short: "partial file"):
            # the transcript stops early or skips, and the user is told, as for a WAV.
            logger.warning("%s: ffmpeg reported an error after %s of audio (%s): part of it may be "
                           "missing", name, _hms(got_s), reason)  # fmt: skip
        elif stderr_tail:  # a warning (a damaged frame skipped): for -v
            logger.info("%s: ffmpeg: %s", name, reason)
        logger.debug("%s: decoded %d samples", name, total)
    finally:
        stop.set()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        if feeder is not None:
            # ffmpeg is dead, so the feeder's next write fails; don't wait long for an
            # iterator that is slow to hand over its next block.
            feeder.join(1.0)
            if feeder.is_alive():
                # Blocked inside the caller's iterator; it ends at that iterator's next
                # item (a write then fails) and is a daemon thread meanwhile.
                logger.warning("%s: input feeder still waiting on its iterator", name)
        if stderr_thread is not None:
            stderr_thread.join(_JOIN_TIMEOUT_S)
        if proc is not None:
            proc.stderr.close()
        if spool_fd is not None:
            os.close(spool_fd)


def _spool(fd: int, head: bytes | bytearray, rest: Iterable[bytes], name: str) -> None:
    """Write ``head`` and then ``rest`` to ``fd`` (left open); disk errors -> ResourceError
    (the machine's fault, not the input's: a server answers 503, not 400).

    Exceptions raised by ``rest`` itself propagate unchanged.
    """

    def write(data) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise ResourceError(
                f"cannot decode {name}: cannot spool to a temporary file: "
                f"{exc.strerror or exc}"
            ) from exc

    write(head)
    for block in rest:
        if block:
            write(block)
