"""Several jobs at once through one pipeline (issue 9): ``Pipeline.run_jobs`` submits them
together, their windows share the decoder, each result goes to its own job, and one job's
failure never touches another's transcript."""

from __future__ import annotations

import pytest

from pipeline.config import Job, PipelineConfig
from pipeline.errors import JobError
from pipeline.runtime import Pipeline
from pipeline.types import DecodeOptions
from tests import media

TONE = "tests.tone_backend:ToneBackend"


@pytest.fixture(scope="module")
def tone_files(tmp_path_factory):
    from tests.tone_backend import make_tone_speech

    d = tmp_path_factory.mktemp("tones")
    out = []
    for seed in (1, 2, 3):
        audio, truth = make_tone_speech(120, seed=seed)
        out.append((media.write_wav(d / f"t{seed}.wav", audio), truth))
    bad = d / "page.mp3"
    bad.write_text("<html>not audio</html>")
    return out, bad


def test_jobs_together_give_what_each_gives_alone(tone_files):
    from tests.tone_backend import score

    files, bad = tone_files
    cfg = PipelineConfig(model="tone:word", backend=TONE, batch_size=4, window_slots=4)
    with Pipeline(cfg) as p:
        alone = [p.transcribe(Job(str(f))) for f, _ in files]
        seen = []
        together = p.run_jobs([Job(str(files[0][0])), Job(str(bad)), Job(str(files[1][0])), str(files[2][0])],
                              progress=lambda i, done, dec, fin: seen.append((i, done)))  # fmt: skip
        again = p.transcribe(Job(str(files[0][0])))  # the pipeline is still fine afterwards
    assert isinstance(together[1], JobError) and "page.mp3" in str(together[1])
    outcomes = [together[0], together[2], together[3]]
    for (f, truth), a, o in zip(files, alone, outcomes):
        assert o.transcript.segments == a.segments, f.name
        assert score(list(o.transcript.segments), truth, "word")["lost"] == 0
        assert o.transcript.duration == pytest.approx(media.duration_of(f), abs=0.1)
    assert again.segments == alone[0].segments
    # Progress names its job; each job's progress ends at its duration.
    for i in (0, 2, 3):
        done = [d for j, d in seen if j == i]
        assert done and done == sorted(done)
        assert done[-1] == pytest.approx(outcomes[[0, 2, 3].index(i)].transcript.duration, abs=0.05)
    assert not [d for j, d in seen if j == 1]


@pytest.fixture(scope="module")
def tiny_pipe(real_tiny_dir):
    """One pipeline with real tiny.en and 4 slots, shared by the tests that need no other."""
    with Pipeline(PipelineConfig(model=real_tiny_dir, batch_size=4)) as p:
        yield p


def test_real_weights_share_the_engine(tiny_pipe, tmp_path):
    """Two readings decoded in the same slots: the same transcripts as alone, and each
    job's decode figures come from the slot engine."""
    a = media.speech(tmp_path / "a.wav", "The quick brown fox jumps over the lazy dog. It was a sunny day.")
    b = media.speech(tmp_path / "b.wav", "A journey of a thousand miles begins with a single step.")
    opts = DecodeOptions(language="en")
    p = tiny_pipe
    alone = [p.transcribe(Job(str(x), opts)) for x in (a, b)]
    both = p.run_jobs([Job(str(a), opts, profile=True), Job(str(b), opts, profile=True)])
    for x, o in zip(alone, both):
        assert not isinstance(o, Exception), o
        assert o.transcript.text == x.text and o.transcript.segments == x.segments
    assert "brown fox" in both[0].transcript.text.lower()
    assert "single step" in both[1].transcript.text.lower()
    d = both[0].stages["infer"]["decode"]
    assert d["engine"] == "slots" and d["slots"] == 4
    assert 0 < d["row_steps_used"] <= d["row_steps_computed"] and d["tokens"] > 0


def test_slot_engine_and_generate_give_the_same_transcript(real_tiny_dir, tiny_pipe, tmp_path):
    """The pipeline with the slot engine and with one generate call per batch: the same
    words, segments and times on real weights (the engine is a faster way to the same
    tokens); each reports its own figures."""
    wav = media.speech(tmp_path / "s.wav", "Permission is hereby granted, free of charge, to any person "
                       "obtaining a copy of this software. The above copyright notice shall be included "
                       "in all copies or substantial portions of the software.")  # fmt: skip
    outs = {"slots": tiny_pipe.run_job(Job(str(wav), DecodeOptions(language="en"), profile=True, batch_size=2))}
    with Pipeline(PipelineConfig(model=real_tiny_dir, batch_size=2, engine="generate")) as p:
        outs["generate"] = p.run_job(Job(str(wav), DecodeOptions(language="en"), profile=True))
    s, g = outs["slots"], outs["generate"]
    assert s.transcript.segments == g.transcript.segments
    assert "software" in s.transcript.text.lower()
    assert s.stages["infer"]["decode"]["engine"] == "slots"
    assert g.stages["infer"]["decode"]["engine"] == "generate"


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine"):
        PipelineConfig(model="x", engine="turbo")


def test_a_jobs_batch_size_caps_its_slots(tiny_pipe, tmp_path):
    """A request's batch_size caps the decoder slots its windows hold at once: with 1, one
    window at a time (every step decodes one row); the words are the same."""
    wav = media.speech(tmp_path / "s.wav", (
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this software "
        "and associated documentation files, to deal in the software without restriction, including "
        "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, "
        "and sell copies of the software. The above copyright notice and this permission notice shall "
        "be included in all copies or substantial portions of the software. A journey of a thousand "
        "miles begins with a single step, and the river that flows past the old mill carries leaves "
        "from the mountains all the way down to the sea."))  # fmt: skip
    opts = DecodeOptions(language="en")
    wide = tiny_pipe.run_job(Job(str(wav), opts, profile=True))
    one = tiny_pipe.run_job(Job(str(wav), opts, profile=True, batch_size=1))
    assert len(one.windows) >= 2
    d1, d4 = one.stages["infer"]["decode"], wide.stages["infer"]["decode"]
    assert d1["row_steps_used"] == d1["steps"]  # one row per step
    assert d4["steps"] < d4["row_steps_used"]  # several rows per step
    assert one.transcript.segments == wide.transcript.segments


def test_a_failed_decoder_step_fails_only_the_jobs_in_it(real_tiny_dir, tmp_path, monkeypatch):
    """A decoder step that raises (here injected once, at the 5th step) fails the job whose
    windows were in the engine, with a one-line reason; the infer stage keeps its model and
    the next job is transcribed as before."""
    a = media.speech(tmp_path / "a.wav", "The quick brown fox jumps over the lazy dog. It was a sunny day.")
    monkeypatch.setenv("WSP_FAULT", "engine:5")  # read by the stage processes at start
    opts = DecodeOptions(language="en")
    with Pipeline(PipelineConfig(model=real_tiny_dir, batch_size=4)) as p:
        with pytest.raises(JobError, match="decoder step failed: injected fault") as err:
            p.transcribe(Job(str(a), opts))
        assert err.value.stage == "infer"
        infer_pid = p.pids["infer"]
        again = p.transcribe(Job(str(a), opts))
        assert p.pids["infer"] == infer_pid  # no restart, no reload
    assert "brown fox" in again.text.lower()


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory):
    d = tmp_path_factory.mktemp("fair")
    # Babble, not steady noise: the chunker finds no speech in steady noise (no window).
    long = media.write_wav(d / "long.wav", media.babble(20 * 60, amp=0.05, seed=5))
    short = media.write_wav(d / "short.wav", media.babble(20, amp=0.05, seed=6))
    return long, short


@pytest.mark.parametrize("concurrent", [1, 4])
def test_a_short_job_is_not_held_behind_a_long_one(tiny_model_dir, long_and_short, concurrent):
    """Issue 9's fairness: a 20-second job submitted just after a 20-minute one (48
    windows) finishes long before it, its windows taking turns with the long job's in
    every stage and in the engine. With one job at a time in the stages (the old way,
    concurrent_jobs=1) the short job waits behind nearly all of the long one."""
    long, short = long_and_short
    cfg = PipelineConfig(model=str(tiny_model_dir), batch_size=2, window_slots=4, concurrent_jobs=concurrent)
    opts = DecodeOptions(tokens_per_window=4)
    seen = []  # (job, window index) in the order results came
    with Pipeline(cfg) as p:
        p.wait_ready(timeout=120)
        runs = {}
        for name, f in (("long", long), ("short", short)):
            runs[name] = p.submit(Job(str(f), opts), on_window=lambda w, n=name: seen.append((n, w.index)))
        out = {name: p.wait(r, timeout=300) for name, r in runs.items()}
    assert out["long"].transcript.duration == pytest.approx(1200, abs=0.1)
    n_long = sum(1 for n, _ in seen if n == "long")
    assert n_long >= 43 and sum(1 for n, _ in seen if n == "short") == 1
    long_before_short = seen.index(("short", 0))
    if concurrent == 1:
        # Its first block could not enter the stages before the long job's last: only
        # the windows that had not yet reached the engine were still behind it.
        assert long_before_short > 30, seen
    else:
        # Behind at most what the rings and the engine held when it came (window ring 4,
        # a slot-load waiting and the slots: 2 + 2, a batch or two in the reader).
        assert long_before_short <= 16, seen[: long_before_short + 1]


def test_next_for_engine_takes_turns():
    """The infer stage's choice of the next decode: the job with the fewest windows in
    the engine, a job's own decodes in order, a job at its cap skipped."""
    from collections import Counter

    from pipeline.runtime.infer_loop import next_for_engine

    class It:
        def __init__(self, seq, n):
            self.seq, self.n = seq, n

    work = [It(1, 0), It(1, 1), It(1, 2), It(2, 0), It(2, 1), It(3, 0)]
    engine = Counter({1: 3, 2: 1})
    caps = {1: 8, 2: 8, 3: 8}
    order = []
    while work:
        at = next_for_engine(work, engine, caps.get)
        it = work.pop(at)
        engine[it.seq] += 1
        order.append((it.seq, it.n))
    assert order == [(3, 0), (2, 0), (2, 1), (1, 0), (1, 1), (1, 2)]
    # A job at its cap waits; with every job at its cap nothing goes in.
    work = [It(1, 0), It(2, 0)]
    assert work[next_for_engine(work, Counter({1: 0, 2: 0}), {1: 0, 2: 8}.get)].seq == 2
    assert next_for_engine(work, Counter({1: 2, 2: 2}), {1: 2, 2: 2}.get) is None
    assert next_for_engine([], Counter(), caps.get) is None


def test_the_infer_stages_lines_name_the_job_they_are_about(tone_files, capfd):
    """With jobs sharing the infer stage, each of its log lines about a job carries that
    job's id (it once carried the id of whichever job had started last): the windows the
    lines of a job say were decoded add up to that job's own decodes."""
    import re

    files, bad = tone_files
    cfg = PipelineConfig(model="tone:word", backend=TONE, batch_size=2, window_slots=4, log_level="DEBUG")
    capfd.readouterr()
    with Pipeline(cfg) as p:
        outs = p.run_jobs([Job(str(files[0][0]), job_id="job-a"), Job(str(files[1][0]), job_id="job-b"),
                           Job(str(bad), job_id="job-c")])  # fmt: skip
    err = capfd.readouterr().err
    decoded = {}
    for m in re.finditer(r"\[infer job=(\S+)\] \S+: decoded (\d+) ", err):
        decoded[m.group(1)] = decoded.get(m.group(1), 0) + int(m.group(2))
    for job_id, o in zip(("job-a", "job-b"), outs):
        assert not isinstance(o, Exception), o
        assert decoded.get(job_id) == sum(o.stages["infer"]["decodes"].values()), (job_id, decoded)
    assert set(decoded) == {"job-a", "job-b"}, decoded
    # The failed job's line in the stage that refused it names it.
    assert re.search(r"\[\w+ job=job-c\] .*page\.mp3", err), err[-2000:]
