"""A job's language when the request names none (stages/language.py): windows whose own
detection is unsure and not one of the job's languages are decoded again in the job's.

The rules alone, then through the process pipeline with a test double whose tone words
are "spoken" in languages (tests/tone_backend.py ``LanguageToneBackend``). Real weights:
tests/test_accuracy_real.py decodes a German reading with multilingual base."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.config import Job, PipelineConfig
from pipeline.constants import SAMPLE_RATE
from pipeline.runtime import Pipeline
from pipeline.types import DecodeOptions, Segment, WindowResult
from stages.language import SURE, is_sure, job_languages, redecode_language
from tests import media

LANG_TONE = "tests.tone_backend:LanguageToneBackend"


def _result(text: str, *probs, language: str | None = None) -> WindowResult:
    segs = (Segment(0.0, 5.0, text),) if text else ()
    return WindowResult(segs, language=language or (probs[0][0] if probs else None), language_probs=probs or None)


# ----------------------------------------------------------------------------- the rules


def test_sure_windows_and_the_leader_make_the_job_languages():
    sure_de = _result(" Guten Morgen, wie geht es?", ("de", 0.99), ("en", 0.01))
    unsure_cy = _result(" Bore da, sut mae?", ("cy", 0.75), ("de", 0.05), ("en", 0.02))
    unsure_la = _result(" Salve", ("la", 0.5), ("de", 0.4))
    votes = job_languages([sure_de, unsure_cy, unsure_la])
    assert votes.accepted == {"de"} and votes.leader == "de"
    assert redecode_language(unsure_cy, votes) == "de"  # its own best among the job's
    assert redecode_language(unsure_la, votes) == "de"
    assert redecode_language(sure_de, votes) is None


def test_two_sure_languages_stay_and_an_unsure_window_goes_to_the_one_it_leans_to():
    en = _result(" The railway station was built long ago.", ("en", 0.99))
    de = _result(" Der kleine Ort am Rande des Waldes.", ("de", 0.95), ("en", 0.03))
    cy = _result(" Die Schule des Dorfes.", ("cy", 0.84), ("en", 0.08), ("de", 0.05))
    la = _result(" Es gibt noch wenige.", ("la", 0.73), ("de", 0.15), ("en", 0.01))
    votes = job_languages([en, de, cy, la])
    assert votes.accepted == {"en", "de"}
    assert redecode_language(cy, votes) == "en"
    assert redecode_language(la, votes) == "de"
    assert redecode_language(en, votes) is None and redecode_language(de, votes) is None


def test_no_sure_window_the_leader_is_the_language_all_windows_allow():
    # French windows of an espeak-ng reading, one taken for Latin (multilingual base).
    a = _result(" Le village est situé au bord de la forêt.", ("fr", 0.59), ("la", 0.2), ("br", 0.1))
    b = _result(" La ville.", ("la", 0.61), ("fr", 0.19), ("br", 0.07))
    c = _result(" Chaque année au mois d'août.", ("fr", 0.32), ("km", 0.15), ("la", 0.14))
    votes = job_languages([a, b, c])
    assert votes.leader == "fr" and votes.accepted == {"fr"}
    assert redecode_language(b, votes) == "fr" and redecode_language(a, votes) is None
    # A window that gave the job's languages no weight at all goes to the leader.
    d = _result(" Xyz", ("ja", 0.5), ("ko", 0.5))
    assert redecode_language(d, votes) == "fr"


def test_a_long_wrong_window_cannot_outvote_the_others():
    # German taken for Welsh writes long nonsense: more letters than the German window.
    cy = _result(" Dyr clyne ort am randy dys valdys var frwher ein dorff dyr holtsffeler " * 3,
                 ("cy", 0.75), ("yi", 0.07), ("de", 0.05), ("en", 0.01))  # fmt: skip
    de = _result(" Im Sommer kommen viele Wanderer.", ("de", 0.99), ("yi", 0.004), ("en", 0.001))
    votes = job_languages([cy, de])
    assert votes.leader == "de" and votes.accepted == {"de"}
    assert redecode_language(cy, votes) == "de"


def test_a_language_whisper_is_never_sure_of_keeps_its_windows():
    # Every window of the talk unsure but leaning the same way; a short English intro sure.
    intro = _result(" Welcome.", ("en", 0.99), ("pt", 0.001), ("gl", 0.001))
    talk = [_result(" Bom dia a todos e obrigado por virem.", ("pt", p), ("gl", 0.1), ("en", 0.03)) for p in (0.8, 0.7, 0.75)]
    votes = job_languages([intro, *talk])
    assert votes.leader == "pt" and votes.accepted == {"en", "pt"}
    assert all(redecode_language(r, votes) is None for r in talk)


def test_what_the_vote_ignores():
    sure_en = _result(" Hello there, how are you?", ("en", 0.99))
    empty = _result("", ("cy", 0.9))  # no text: its detection is noise
    given = _result(" Hallo", language="de")  # a language given: nothing was detected
    votes = job_languages([sure_en, empty, given])
    assert votes.accepted == {"en"} and votes.leader == "en"
    assert is_sure(empty) and is_sure(given)
    assert redecode_language(empty, votes) is None and redecode_language(given, votes) is None
    assert job_languages([]).leader is None
    assert redecode_language(_result(" Hm", ("cy", 0.5)), job_languages([])) is None


def test_a_window_in_a_language_sure_windows_found_is_settled_before_the_vote():
    from stages.language import settled_early, sure_languages

    en = _result(" The railway station was built long ago.", ("en", 0.99))
    quiet = _result("", ("de", 0.99))  # no text: not a voter
    leaning_en = _result(" The bells.", ("en", 0.7), ("de", 0.3))
    leaning_de = _result(" Die Glocken.", ("de", 0.7), ("en", 0.3))
    found = sure_languages([en, quiet, leaning_en])
    assert found == {"en"}
    assert settled_early(leaning_en, found) and not settled_early(leaning_de, found)
    # What it settles is what the vote says once every window is in, whatever they say.
    for more in ([], [leaning_de], [_result(" Der Ort.", ("de", 0.95))]):
        votes = job_languages([en, leaning_en, leaning_de, *more])
        assert redecode_language(leaning_en, votes) is None
    # Decoded in another language than its most likely one (a fallback's): not settled.
    assert not settled_early(dataclasses.replace(leaning_en, language="de"), found)


def test_the_vote_does_not_depend_on_the_order_windows_came_in():
    rs = [
        _result(" one two three", ("de", 0.5), ("en", 0.49), ("cy", 0.01)),
        _result(" four five six", ("en", 0.5), ("de", 0.49), ("cy", 0.01)),
        _result(" seven", ("cy", 0.6), ("de", 0.2), ("en", 0.2)),
    ]
    first = job_languages(rs)
    for order in ([2, 1, 0], [1, 2, 0], [0, 2, 1]):
        assert job_languages([rs[i] for i in order]) == first
    assert first.leader == "de"  # an exact tie goes to the code that sorts first
    assert SURE == pytest.approx(0.9)


# ----------------------------------------------------------------- the window review


def _loop_in(lang, probs=None, T=0.0):
    """A decode that fails the fallback's compression test (a repetition loop)."""
    from tests.test_quality import res, seg

    return dataclasses.replace(res(seg(0.0, 19.6, " to benefit," * 30), T=T, cr=3.5, lp=-0.2, n=120, lang=lang),
                               language_probs=probs)  # fmt: skip


def test_an_unsure_window_is_held_before_its_fallbacks_and_resumed_from_its_first_decode():
    """Held right after its first decode: no fallback is decoded in a language the job's
    vote may overrule (base wrote ten fallbacks of Welsh-looking nonsense for a German
    window before deciding). Resumed, it goes on exactly as it would have."""
    from stages.pace import Pace
    from stages.review import WindowReview
    from tests.test_quality import FakeDecoder, drive, res, seg, speech_like

    audio = speech_like(20.0)
    good = res(seg(0.0, 19.6, " To benefit the people of the town."), lp=-0.5, n=30)
    unsure = (("cy", 0.75), ("de", 0.05))

    def script(r):
        return good if r.temperature >= 0.4 else _loop_in("cy", unsure if r.kind == "window" else None)

    # The same window without holding, for what it should end with (a job's pace of its
    # own too: a cold one, so the skip check judges both alike by its prior rate).
    plain = drive(WindowReview(4, audio, pace=Pace()), FakeDecoder(script))
    pace = Pace()
    review = WindowReview(4, audio, pace=pace, hold_if=lambda r: not is_sure(r))
    dec = FakeDecoder(script)
    (req,) = review.requests()
    assert review.feed(req, dec(req)) == []
    assert review.held is not None and review.held.language_probs == unsure
    assert not review.done and review.decided  # the windows after it need not wait
    follow = review.resume()
    assert [(r.kind, r.temperature, r.language) for r in follow] == [("fallback", 0.2, "cy")]
    queue = follow
    while queue:
        r = queue.pop(0)
        queue.extend(review.feed(r, dec(r)))
    assert review.done and review.held is None
    assert review.result().segments == plain.segments
    assert review.result().language_probs == unsure  # the vote's evidence, from the first decode


def test_a_window_decoded_again_in_the_jobs_language():
    from stages.review import WindowReview
    from tests.test_quality import FakeDecoder, drive, res, seg, speech_like

    audio = speech_like(12.0)
    dec = FakeDecoder(lambda r: res(seg(0.0, 11.0, " Der kleine Ort am Rande des Waldes."), lang=r.language))
    review = WindowReview(2, audio, language="de")
    out = drive(review, dec)
    assert dec.seen[0].kind == "language" and {r.language for r in dec.seen} == {"de"}  # its tail too
    assert out.language == "de" and review.counts["language"] == 1


# ------------------------------------------------------------------- through the pipeline


def _tone_stretch(band, seconds: float, rng) -> np.ndarray:
    """Tone words of one band (w{10*band}..w{10*band+9}) for ``seconds``, then 3 s of
    silence; ``band`` a tuple: each word's band drawn from it (a mixed window)."""
    from tests.tone_backend import tone_word

    bands = band if isinstance(band, tuple) else (band,)
    parts, t = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)], 0.3
    while t < seconds:
        d, gap = float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.12, 0.3))
        b = bands[int(rng.integers(len(bands)))]
        parts += [tone_word(10 * b + int(rng.integers(10)), int(d * SAMPLE_RATE)), np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        t += d + gap
    parts.append(np.zeros(3 * SAMPLE_RATE, np.float32))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def language_wav(tmp_path_factory):
    """Four windows: unsure ("cy"), sure German, sure English, sure German."""
    rng = np.random.default_rng(11)
    audio = np.concatenate([_tone_stretch(b, 24.0, rng) for b in (0, 2, 1, 2)])
    return media.write_wav(tmp_path_factory.mktemp("lang") / "lang.wav", audio)


def _languages_by_window(outcome) -> list[set]:
    return [{w.rsplit(".", 1)[1] for s in tw.result.segments for w in s.text.split()} for tw in outcome.windows]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_an_unsure_window_is_decoded_again_in_the_jobs_language(language_wav, batch_size):
    cfg = PipelineConfig(model="tone:phrase", backend=LANG_TONE, batch_size=batch_size)
    with Pipeline(cfg) as p:
        out = p.run_job(Job(str(language_wav)), timeout=120)
        given = p.run_job(Job(str(language_wav), options=DecodeOptions(language="en")), timeout=120)
    assert len(out.windows) == 4
    # Window 0 came out Welsh, unsure; the job speaks German and English, and window 0
    # leaned to German: decoded again in German. The sure windows keep their own.
    assert _languages_by_window(out) == [{"de"}, {"de"}, {"en"}, {"de"}]
    assert [tw.result.language for tw in out.windows] == ["de", "de", "en", "de"]
    assert out.stages["infer"]["decodes"]["language"] == 1
    assert out.transcript.language == "de"
    assert ".cy" not in out.transcript.text
    # A language given: nothing detected, nothing decoded again.
    assert _languages_by_window(given) == [{"en"}] * 4
    assert given.stages["infer"]["decodes"]["language"] == 0


def test_an_unsure_window_in_a_language_a_sure_window_found_goes_on_before_the_jobs_end(tmp_path):
    """The vote on an unsure window whose language a sure window already found is known
    (the job's languages only grow): it goes on then, and the stream does not wait for
    the job's end; one in no sure window's language still waits for the vote."""
    rng = np.random.default_rng(7)
    bands = [(1, 1, 2), 1, 0, 1, 1, 1, 1]  # unsure, leaning English; English; "Welsh"; English...
    wav = media.write_wav(tmp_path / "seven.wav", np.concatenate([_tone_stretch(b, 24.0, rng) for b in bands]))
    last, texts = len(bands) - 1, []
    for batch_size in (1, 3):
        arrived: list = []
        with Pipeline(PipelineConfig(model="tone:phrase", backend=LANG_TONE, batch_size=batch_size)) as p:
            out = p.wait(p.submit(Job(str(wav)), on_window=lambda tw: arrived.append(tw.index)), timeout=120)
        assert len(out.windows) == len(bands) and sorted(arrived) == list(range(len(bands)))
        assert arrived.index(0) < arrived.index(last), arrived  # went on once window 1 was sure of English
        assert arrived[-1] == 2, arrived  # the "Welsh" window waited for the vote...
        assert _languages_by_window(out) == [{"en"}] * len(bands)  # ...and was decoded again in English
        assert out.stages["infer"]["decodes"]["language"] == 1
        texts.append(out.transcript.text)
    # Window 0 goes on once its earlier windows (none) were decided: the same transcript
    # whichever windows shared its batch.
    assert texts[0] == texts[1]


def test_sure_windows_are_never_decoded_again(tmp_path):
    rng = np.random.default_rng(5)
    audio = np.concatenate([_tone_stretch(b, 24.0, rng) for b in (2, 1)])
    wav = media.write_wav(tmp_path / "two.wav", audio)
    with Pipeline(PipelineConfig(model="tone:phrase", backend=LANG_TONE, batch_size=2)) as p:
        out = p.run_job(Job(str(wav)), timeout=120)
    assert _languages_by_window(out) == [{"de"}, {"en"}]
    assert out.stages["infer"]["decodes"]["language"] == 0


def test_plain_decoding_keeps_each_windows_own_language(language_wav):
    """--plain (the review off): each window decoded once, in what it was detected as,
    and nothing waits for the job's end."""
    from stages.quality import QualityConfig

    cfg = PipelineConfig(model="tone:phrase", backend=LANG_TONE, batch_size=2, quality=QualityConfig(enabled=False))
    with Pipeline(cfg) as p:
        out = p.run_job(Job(str(language_wav)), timeout=120)
    assert _languages_by_window(out) == [{"cy"}, {"de"}, {"en"}, {"de"}]
    assert out.stages["infer"]["decodes"]["language"] == 0


def test_a_vote_that_fails_fails_its_job_alone(language_wav, tmp_path):
    """An error while the job's vote sends a window to be decoded again fails that job
    with its reason, at once (no wait), and the pipeline goes on with the next job."""
    from pipeline.errors import JobError

    rng = np.random.default_rng(5)
    other = media.write_wav(tmp_path / "two.wav", np.concatenate([_tone_stretch(b, 24.0, rng) for b in (2, 1)]))
    with Pipeline(PipelineConfig(model="tone:phrase", backend="tests.tone_backend:RedoFailsBackend", batch_size=2)) as p:
        with pytest.raises(JobError, match="injected: cannot prepare the window again") as err:
            p.run_job(Job(str(language_wav)), timeout=120)
        assert err.value.stage == "infer"
        out = p.run_job(Job(str(other)), timeout=120)
    assert _languages_by_window(out) == [{"de"}, {"en"}]
