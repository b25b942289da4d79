"""Inference stage core: log-mel features per window, batched Whisper decoding.

No IPC here. The infer process calls ``prepare`` on each 30 s window as it arrives (so
the shared-memory slot holding its audio can be freed at once), collects the returned
features into a batch, and calls ``transcribe`` on the batch.

Decoding is greedy with timestamps, one ``generate`` call per batch:

- The encoder runs once per batch, outside ``generate``, and its output is handed in as
  ``encoder_outputs``: with ``language=None`` Whisper's ``detect_language`` would
  otherwise run the whole encoder a second time.
- ``force_unique_generate_call=True``: for a 30 s input whose last segment has no closing
  timestamp, Whisper's ``generate`` would otherwise drop that segment, seek to the last
  timestamp and decode the rest of the window again (a second pass for the whole batch).
  We keep the open segment instead and mark it ``open_end``; the overlapping next window
  covers the cut speech, and the stitcher decides.
- ``max_new_tokens`` defaults to ``max_target_positions // 2`` (224), openai/whisper's
  ``sample_len``: a batch runs until its longest window stops, so one window stuck in a
  repetition loop would otherwise hold the whole batch for 445 steps.

Segments are cut from the token ids with the same rules as transformers' ASR pipeline
(``tokenization_whisper._decode_asr`` for a single 30 s input), so the window's text,
``"".join(seg.text for seg in segments)``, equals the pipeline's ``text`` with the same
generate kwargs (tests/test_infer.py checks this on random weights).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from typing import Any

import numpy as np
import torch

from pipeline.constants import CHUNK_LENGTH, N_FRAMES, N_SAMPLES, NO_SPEECH_THRESHOLD, TIME_PRECISION
from pipeline.errors import UnsupportedOptions
from pipeline.types import DecodeOptions, Segment, WindowResult
from pipeline.weights import resolve_model
from stages.quality import compression_ratio

logger = logging.getLogger(__name__)

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one line: ``cannot load model 'x': ...``."""


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception's message (hub errors span many lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class BatchedTimestampRules:
    """Whisper's timestamp rules (``WhisperTimeStampLogitsProcessor``) without Python loops.

    transformers' processor loops over the batch and calls ``.tolist()`` on every row at
    every decoding step: on a GPU that is ``batch_size`` device->host syncs per token, which
    dominates decoding time at batch 64-256. This does the same masking with whole-batch
    tensor ops and no sync. Rules, per row, on the tokens generated so far:

    - <|notimestamps|> is never generated;
    - after a timestamp pair (or a timestamp as the first token) text must follow; after a
      single timestamp, another timestamp or end-of-text must follow;
    - timestamps never decrease (and a new pair starts strictly after the last one);
    - the first token is a timestamp no later than ``max_initial_timestamp_index``;
    - when the timestamps' total probability beats every text token, emit a timestamp.
    """

    def __init__(self, original):
        self.no_timestamps_token_id = original.no_timestamps_token_id
        self.timestamp_begin = original.timestamp_begin
        self.eos_token_id = original.eos_token_id
        self.begin_index = original.begin_index
        self.max_initial_timestamp_index = original.max_initial_timestamp_index
        self._detect_timestamp_from_logprob = original._detect_timestamp_from_logprob

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: (B, L) int64; scores: (B, V) float. Returns masked scores (B, V)."""
        tb = self.timestamp_begin
        neg_inf = -float("inf")
        scores = scores.clone()
        scores[:, self.no_timestamps_token_id] = neg_inf
        ts_scores = scores[:, tb:]  # view: writes land in ``scores``

        seq = input_ids[:, self.begin_index :]
        n = seq.shape[1]
        if n > 0:
            is_ts = seq >= tb  # (B, n)
            last_ts = is_ts[:, -1]
            penult_ts = is_ts[:, -2] if n >= 2 else torch.ones_like(last_ts)
            single = last_ts & ~penult_ts  # a segment was just closed: no text now
            ts_scores.masked_fill_((last_ts & penult_ts)[:, None], neg_inf)
            scores[:, : self.eos_token_id].masked_fill_(single[:, None], neg_inf)

            # Value of each row's last timestamp (positions are 1-based so 0 means none).
            pos = torch.arange(1, n + 1, device=seq.device)
            last_pos = (is_ts * pos).argmax(dim=1, keepdim=True)  # (B, 1)
            has_ts = is_ts.any(dim=1)
            last_val = seq.gather(1, last_pos).squeeze(1) - tb  # (B,)
            lowest_allowed = torch.where(single, last_val, last_val + 1)
            lowest_allowed = torch.where(has_ts, lowest_allowed, torch.zeros_like(last_val))
            cols = torch.arange(ts_scores.shape[1], device=seq.device)
            ts_scores.masked_fill_(cols[None, :] < lowest_allowed[:, None], neg_inf)
        else:
            scores[:, :tb] = neg_inf
            if self.max_initial_timestamp_index is not None:
                scores[:, tb + self.max_initial_timestamp_index + 1 :] = neg_inf

        if self._detect_timestamp_from_logprob:
            logprobs = torch.nn.functional.log_softmax(scores.float(), dim=-1)
            timestamp_logprob = logprobs[:, tb:].logsumexp(dim=-1)
            max_text_token_logprob = logprobs[:, :tb].max(dim=-1).values
            prefer_ts = timestamp_logprob > max_text_token_logprob
            scores[:, :tb].masked_fill_(prefer_ts[:, None], neg_inf)
        return scores


class StepRecorder:
    """The last logits processor of a ``generate`` call: records each row's token
    log-probabilities and, for rows given a temperature, samples instead of taking the
    argmax, reproducibly.

    Recording: at every step, for each row still running, the log-probability (under the
    fully processed distribution, unscaled: openai/whisper's ``sum_logprobs``) of the token
    greedy search is about to pick is added to ``sum_logprob`` and ``count``; the step that
    picks end-of-text is included, later padding steps are not.

    Sampling at temperature T > 0 uses the Gumbel-max trick: ``argmax(s + T * g)`` with
    ``g ~ Gumbel(0, 1)`` is a sample from ``softmax(s / T)``, so greedy search then samples.
    Each row draws its noise from its own generator seeded by ``seeds[row]``: a row's
    result depends on its seed and audio alone, not on which rows share its batch (torch's
    global generator, which ``do_sample`` uses, would tie it to the batch's make-up).
    """

    def __init__(
        self,
        batch: int,
        eos: int,
        temperatures=None,
        seeds=None,
        device="cpu",
        sound=None,
        timestamp_begin: int | None = None,
        no_speech=None,
    ):
        self.eos = eos
        self.prompt_len: int | None = None
        # End-of-text veto (see ``EotVeto``): per row, the window's seconds of audio and
        # cumulative seconds of sound per 50 ms frame, or None for no veto; ``no_speech``:
        # per row, the window's no-speech probability (the veto stays out over the line).
        self.veto = EotVeto(sound, timestamp_begin, device, no_speech=no_speech) if sound is not None else None
        self.sum_logprob = torch.zeros(batch, dtype=torch.float64, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.hot: list[tuple[int, float, torch.Generator]] = []
        for row, t in enumerate(temperatures or ()):
            if t > 0:
                g = torch.Generator(device=device)
                g.manual_seed(int(seeds[row]) if seeds is not None else row)
                self.hot.append((row, float(t), g))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: (B, L) int64; scores: (B, V). Returns scores (noised rows for T > 0)."""
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        if self.veto is not None:
            scores = self.veto(input_ids[:, self.prompt_len :], scores, self.eos, ~self.done)
        # Log-probabilities under the model's (processed, unscaled) distribution, as
        # openai/whisper records them for sampled tokens too: before any noise.
        logprobs = torch.nn.functional.log_softmax(scores.float(), dim=-1)
        if self.hot:
            scores = scores.clone()
            for row, t, g in self.hot:
                u = torch.rand(scores.shape[1], generator=g, device=scores.device)
                gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
                scores[row] += (t * gumbel).to(scores.dtype)
        picked = scores.argmax(dim=-1, keepdim=True)
        running = ~self.done
        self.sum_logprob += torch.where(running, logprobs.gather(1, picked).squeeze(1), 0.0).double()
        self.count += running.long()
        self.done |= picked.squeeze(1) == self.eos
        return scores

    def avg_logprobs(self) -> list[float]:
        """Per row: summed log-probability over the generated tokens, end-of-text included,
        divided by their count (openai/whisper's ``sum_logprob / (len(tokens) + 1)``, its
        ``tokens`` being those before end-of-text)."""
        return (self.sum_logprob / self.count.clamp(min=1)).tolist()


class EotVeto:
    """Keeps a row from ending its transcript while its window still has sound after the
    last timestamp it gave (issue 8).

    Whisper often ends a window early: on windows cut at quiet points, greedy decoding
    with real tiny.en stopped before the window's last sentence in 11 of 23 windows of a
    10-minute reading (a 15-word run lost). openai's sequential decoding recovers such
    text by seeking to the last timestamp and decoding again; here the row is simply not
    allowed to stop: when end-of-text is about to be chosen right after a timestamp (not
    after text: a segment left open, which end-of-text says runs to the window's end),
    that timestamp is at least ``min_left_s`` before the end of the window's audio and at
    least ``min_sound_s`` of sound lies after it, end-of-text is masked and the row goes
    on (a timestamp opens the next segment). At most ``max_vetoes`` times per row. Measured on the same reading:
    the same words as decoding the dropped tail again as a window of its own, without a
    second encoder pass or batch.

    Not in a window whose no-speech probability is over ``max_no_speech`` (openai's
    no-speech line): there the model hears no speech, and sound is not speech. Over music,
    a 4 s window of chords the model ended after "Thank you." (mean log-probability
    -1.25, no-speech 0.73: the no-speech rule empties it) was kept going into "Thank you.
    Thank you.", whose more confident repeat lifted the mean to -0.99, over the rule's
    line: the veto wrote words and made them pass. A window with speech in it has such a
    probability only rarely, and the review's tail re-decode still hears what it dropped.

    ``sound``: per row None (no veto) or (valid_s, cum) with ``cum`` (F + 1,) float, the
    cumulative seconds of sound over 50 ms frames (``stages.levels.sound_profile``);
    ``no_speech``: None or per row the window's no-speech probability (None: unknown).
    """

    FRAME_S = 0.05

    def __init__(
        self, sound, timestamp_begin: int, device, min_left_s=1.0, min_sound_s=0.3, grace_s=0.5, max_vetoes=3,
        max_no_speech=NO_SPEECH_THRESHOLD, no_speech=None,
    ):
        self.tb = timestamp_begin
        n = len(sound)
        frames = max((len(c) for _, c in (x for x in sound if x is not None)), default=1)
        cum = torch.zeros((n, frames), dtype=torch.float32)
        valid = torch.zeros(n, dtype=torch.float32)
        active = torch.zeros(n, dtype=torch.bool)
        for row, item in enumerate(sound):
            if item is None or (no_speech is not None and no_speech[row] is not None and no_speech[row] > max_no_speech):
                continue
            v, c = item
            c = torch.as_tensor(c, dtype=torch.float32)
            cum[row, : len(c)] = c
            cum[row, len(c) :] = c[-1]
            valid[row] = float(v)
            active[row] = True
        self.cum, self.valid, self.active = cum.to(device), valid.to(device), active.to(device)
        self.left = torch.full((n,), max_vetoes, dtype=torch.long, device=device)
        self.min_left_s, self.min_sound_s, self.grace_s = min_left_s, min_sound_s, grace_s

    def __call__(self, generated: torch.LongTensor, scores: torch.FloatTensor, eos: int, running) -> torch.FloatTensor:
        """generated: (B, n) tokens after the prompt; scores: (B, V). Returns scores.

        Whole-batch tensor ops with no branch on their values: no device->host sync per
        step on a GPU (the reason ``BatchedTimestampRules`` exists)."""
        wants_eos = (scores.argmax(dim=-1) == eos) & running & self.active & (self.left > 0)
        n = generated.shape[1]
        if n:
            is_ts = generated >= self.tb
            # Only after a timestamp. Text after the last one is a segment left open:
            # end-of-text there says it runs to the window's end, so how far the text got
            # is unknown, and its opening timestamp is no measure of it (with a prompt,
            # tiny and base write a whole window as one open segment from <|0.00|>; the
            # veto then saw 18 s of sound "after" it and made the model go on inventing).
            wants_eos &= is_ts[:, -1]
            pos = torch.arange(1, n + 1, device=generated.device)
            last_pos = (is_ts * pos).argmax(dim=1, keepdim=True)
            last_val = (generated.gather(1, last_pos).squeeze(1) - self.tb).clamp(min=0).float()
            last_t = torch.where(is_ts.any(dim=1), last_val * 0.02, torch.zeros_like(last_val))
        else:
            last_t = torch.zeros(generated.shape[0], device=generated.device)
        # Sound within ``grace_s`` of the last timestamp is the end of its own word (the
        # model's timestamps are a few hundred ms early at times), not speech left over.
        frame = ((last_t + self.grace_s) / self.FRAME_S).long().clamp(0, self.cum.shape[1] - 1)
        after = self.cum[:, -1] - self.cum.gather(1, frame[:, None]).squeeze(1)
        veto = wants_eos & (self.valid - last_t >= self.min_left_s) & (after >= self.min_sound_s)
        scores = scores.clone()
        scores[:, eos] = torch.where(veto, torch.full_like(scores[:, eos], -float("inf")), scores[:, eos])
        self.left -= veto.long()
        return scores


class WhisperBackend:
    """A Whisper checkpoint ready for batched, timestamped, greedy decoding of 30 s windows.

    ``model``: hub id or local directory (``from_pretrained``; set HF_HUB_OFFLINE=1 where
    there is no network). ``device``: None picks "cuda" when available, else "cpu".
    ``dtype``: "float16" | "bfloat16" | "float32"; None is float16 on CUDA, float32 on CPU.
    ``batched_timestamp_rules``: replace transformers' per-row timestamp logits processor
    with the equivalent ``BatchedTimestampRules`` (no per-step GPU syncs).
    """

    def __init__(
        self,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        *,
        batched_timestamp_rules: bool = True,
    ):
        from transformers import (
            AutoTokenizer,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
        )

        self.model_id = str(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = "float16" if torch.device(self.device).type == "cuda" else "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.dtype = dtype
        self._torch_dtype = DTYPES[dtype]

        try:
            # A short name (tiny.en, base) or a CTranslate2 directory becomes a converted
            # local checkpoint; self.model_id stays what the user gave, for display.
            self.model_path = resolve_model(self.model_id)
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(self.model_path)
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            net = WhisperForConditionalGeneration.from_pretrained(
                self.model_path, dtype=self._torch_dtype, attn_implementation="sdpa"
            )
        except Exception as exc:  # noqa: BLE001 - any loader failure is the same user error
            raise ModelLoadError(f"cannot load model {self.model_id!r}: {_one_line(exc)}") from exc
        self.model = net.to(self.device).eval()

        gc = self.model.generation_config
        if getattr(gc, "no_timestamps_token_id", None) is None:
            raise ModelLoadError(
                f"cannot load model {self.model_id!r}: its generation config has no "
                "no_timestamps_token_id (timestamps are required)"
            )
        self.timestamp_begin = gc.no_timestamps_token_id + 1
        self.eot = gc.eos_token_id if isinstance(gc.eos_token_id, int) else gc.eos_token_id[0]
        self.multilingual = bool(getattr(gc, "is_multilingual", False))
        self._id_to_lang = {
            i: tok[2:-2] for tok, i in (getattr(gc, "lang_to_id", None) or {}).items()
        }
        self._lang_ids = sorted(self._id_to_lang)
        # <|nocaptions|> (<|nospeech|> from large-v3 on) sits just before <|notimestamps|>.
        self.no_speech_id = gc.no_timestamps_token_id - 1
        # openai/whisper sample_len: n_text_ctx // 2 tokens per window at most.
        self.max_new_tokens = self.model.config.max_target_positions // 2
        self.sot = gc.decoder_start_token_id
        self.prev_sot = getattr(gc, "prev_sot_token_id", None)
        if self.prev_sot is None:
            self.prev_sot = self.tokenizer.convert_tokens_to_ids("<|startofprev|>")

        # Feature extraction constants, on the device once (WhisperFeatureExtractor's torch
        # path re-creates them and copies its result back to host memory on every call).
        fe = self.feature_extractor
        self.n_mels = fe.feature_size
        self._n_fft, self._hop, self._dither = fe.n_fft, fe.hop_length, fe.dither
        self._window = torch.hann_window(fe.n_fft, device=self.device)
        self._mel_filters = torch.from_numpy(fe.mel_filters).to(self.device, torch.float32)

        if batched_timestamp_rules:
            self._install_batched_timestamp_rules()
        logger.info(
            "loaded %s on %s (%s, %d mel bins, multilingual=%s)",
            self.model_id,
            self.device,
            self.dtype,
            self.n_mels,
            self.multilingual,
        )

    def _install_batched_timestamp_rules(self) -> None:
        """Swap ``WhisperTimeStampLogitsProcessor`` for ``BatchedTimestampRules``.

        Whisper's ``generate`` builds its processors in ``_retrieve_logit_processors``;
        wrapping it on this instance only (not the class) keeps other models untouched.
        """
        from transformers.generation.logits_process import (
            WhisperTimeStampLogitsProcessor,
        )

        original = getattr(self.model, "_retrieve_logit_processors", None)
        if original is None:
            logger.warning(
                "transformers has no _retrieve_logit_processors; keeping its timestamp rules"
            )
            return

        def retrieve(*args, **kwargs):
            procs = original(*args, **kwargs)
            if procs is None:
                return procs
            return [
                (BatchedTimestampRules(p) if type(p) is WhisperTimeStampLogitsProcessor else p)
                for p in procs
            ]

        self.model._retrieve_logit_processors = retrieve

    @torch.inference_mode()
    def prepare(self, audio: np.ndarray) -> torch.Tensor:
        """Log-mel features of one window, on ``self.device``.

        audio: (480000,) float32, silence-padded in the audio domain (never pad mel frames).
        Returns (n_mels, 3000) float32, the same computation as WhisperFeatureExtractor's
        torch path (bit-identical on CPU), without its round trip through host memory.
        The caller may reuse ``audio``'s memory as soon as this returns.
        """
        if audio.shape != (N_SAMPLES,):
            raise ValueError(f"expected audio of shape ({N_SAMPLES},), got {tuple(audio.shape)}")
        # A blocking copy: with non_blocking=True a shared-memory slot could be recycled
        # before the copy to the GPU had read it.
        wave = torch.from_numpy(np.asarray(audio, dtype=np.float32)).to(self.device)
        if self._dither != 0.0:
            wave = wave + self._dither * torch.randn_like(
                wave
            )  # out of place: never write the caller's buffer
        stft = torch.stft(wave, self._n_fft, self._hop, window=self._window, return_complex=True)
        magnitudes = stft[..., :-1].abs() ** 2  # (n_fft // 2 + 1, 3000)
        mel = self._mel_filters.T @ magnitudes  # (n_mels, 3000)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        features = (log_spec + 4.0) / 4.0
        assert features.shape == (self.n_mels, N_FRAMES)
        return features

    def prompt_ids(self, options: DecodeOptions) -> list[int]:
        """The previous-text tokens of ``options.prompt`` (OpenAI's ``prompt``), [] for none:
        ``<|startofprev|>`` and the tokens of ``" " + prompt.strip()`` (transformers'
        ``get_prompt_ids``), of which the last ``max_target_positions // 2 - 1`` (223) are
        kept, as openai/whisper and transformers' long-form path cut previous text. Every
        window of the job is decoded after them, as ``generate(prompt_ids=...)`` does.
        A prompt holding a special token (``<|en|>``) is a ValueError."""
        if options.prompt is None or not options.prompt.strip():
            return []
        ids = [int(i) for i in self.tokenizer.get_prompt_ids(options.prompt, return_tensors="np")]
        keep = self.model.config.max_target_positions // 2 - 1
        return [self.prev_sot] + ids[1:][-keep:]

    def token_limits(self, options: DecodeOptions, prompt_len: int) -> tuple[int, int]:
        """(min, max) new tokens of a window whose decoder prompt (previous text and the
        start tokens) is ``prompt_len`` tokens long: ``tokens_per_window`` (both) or
        (0, ``max_new_tokens``), cut so that prompt and tokens fit in
        ``max_target_positions`` (as generate requires)."""
        room = self.model.config.max_target_positions - prompt_len
        if options.tokens_per_window is not None:
            n = min(options.tokens_per_window, room)
            return n, n
        return 0, min(self.max_new_tokens, room)

    def start_tokens(self) -> int:
        """Length of the start sequence: <|startoftranscript|> [<|lang|> <|task|>]."""
        return 3 if self.multilingual else 1

    def generate_kwargs(self, options: DecodeOptions) -> dict[str, Any]:
        """The kwargs ``transcribe`` passes to ``model.generate`` (tests pass them to the pipeline)."""
        kwargs: dict[str, Any] = {
            "return_timestamps": True,
            "num_beams": 1,
            "do_sample": False,
            "force_unique_generate_call": True,
        }
        prompt = self.prompt_ids(options)
        lo, hi = self.token_limits(options, len(prompt) + self.start_tokens())
        if options.tokens_per_window is not None:
            kwargs["min_new_tokens"] = lo
        kwargs["max_new_tokens"] = hi
        if prompt:
            kwargs["prompt_ids"] = torch.tensor(prompt, dtype=torch.long, device=self.device)
        if self.multilingual:
            kwargs["task"] = options.task
            if options.language is not None:
                kwargs["language"] = options.language
        elif options.task != "transcribe" or options.language not in (None, "en"):
            raise UnsupportedOptions(
                f"{self.model_id} is English-only: it cannot {options.task} {options.language or ''}".rstrip()
            )
        return kwargs

    @torch.inference_mode()
    def transcribe(
        self,
        features: list[torch.Tensor],
        options: DecodeOptions,
        temperatures: list[float] | None = None,
        seeds: list[int] | None = None,
        sound: list | None = None,
    ) -> list[WindowResult]:
        """Decode a batch of windows in one ``generate`` call.

        features: B tensors (n_mels, 3000) from ``prepare``. ``temperatures``: per row, 0
        (greedy) or a temperature at which that row is sampled, reproducibly from
        ``seeds[row]`` (see ``StepRecorder``); None: ``options.temperature`` for every row.
        Returns B WindowResults, in order, with window-relative segment times in [0, 30] s
        and the quality signals.
        """
        if not features:
            return []
        if temperatures is None and options.temperature > 0:
            temperatures = [float(options.temperature)] * len(features)
        kwargs = self.generate_kwargs(options)
        t0 = time.perf_counter()
        batch = torch.stack(features).to(self._torch_dtype)  # (B, n_mels, 3000)
        encoder_outputs = self.model.get_encoder()(batch)
        no_speech, languages, probs = self._first_step(encoder_outputs.last_hidden_state, options)
        t1 = time.perf_counter()  # the first step's .tolist() waited for the encoder
        if languages is not None:
            kwargs["language"] = [f"<|{code}|>" for code in languages]
        recorder = StepRecorder(
            len(features), self.eot, temperatures, seeds, device=batch.device,
            sound=sound, timestamp_begin=self.timestamp_begin, no_speech=no_speech,
        )
        sequences = self.model.generate(
            encoder_outputs=encoder_outputs, logits_processor=[recorder], **kwargs
        )
        # The only device->host copies: (B, prompt + generated) int64 and per-row figures.
        rows = sequences.cpu().tolist()
        # (encoder + first step, the rest of decoding) seconds: the decode figures of
        # ``--engine generate`` (pipeline/runtime/infer_loop.py), beside the slot engine's.
        self.last_timing = (t1 - t0, time.perf_counter() - t1)
        results = self._results(rows, options, recorder.avg_logprobs(), no_speech, temperatures)
        if probs is not None:
            results = [dataclasses.replace(r, language_probs=lp) for r, lp in zip(results, probs)]
        return results

    @torch.inference_mode()
    def _first_step(self, encoder_hidden: torch.Tensor, options: DecodeOptions):
        """One decoder step on <|startoftranscript|> alone, as openai/whisper does before
        decoding: the probability of the no-speech token there (its ``no_speech_prob``)
        and, when the language is not given, each row's most likely language (what
        transformers' ``detect_language`` computes with the same step: doing it here
        saves ``generate`` a second encoder pass over the batch).

        With a prompt (``prompt_ids``) the no-speech probability is read at
        <|startoftranscript|> after the previous-text tokens, where openai/whisper's
        decoding reads it (``probs_at_sot``); the language is still detected from
        <|startoftranscript|> alone, as ``generate``'s ``detect_language`` does.

        encoder_hidden: (B, 1500, d_model). Returns (B floats, B language codes or None,
        B ``language_probs`` or None).
        """
        n = encoder_hidden.shape[0]
        dev = encoder_hidden.device

        def logits_after(tokens: list[int]) -> torch.Tensor:  # (B, V) at the last token
            ids = torch.tensor([tokens] * n, dtype=torch.long, device=dev)
            hidden = self.model.model.decoder(
                input_ids=ids, encoder_hidden_states=encoder_hidden, use_cache=False
            ).last_hidden_state
            return self.model.proj_out(hidden[:, -1]).float()

        prompt = self.prompt_ids(options)
        detect = self.multilingual and options.language is None and bool(self._lang_ids)
        logits = logits_after([self.sot]) if detect or not prompt else None
        after_prompt = logits_after(prompt + [self.sot]) if prompt else logits
        no_speech = after_prompt.softmax(dim=-1)[:, self.no_speech_id].tolist()
        languages = probs = None
        if detect:
            lang_ids = torch.tensor(self._lang_ids, device=logits.device)
            best = logits[:, lang_ids].argmax(dim=-1).tolist()
            languages = [self._id_to_lang[self._lang_ids[i]] for i in best]
            probs = self.language_probs(logits[:, lang_ids])
        return no_speech, languages, probs

    def language_probs(self, lang_logits: torch.Tensor, top: int = 8) -> list[tuple]:
        """(B, languages) logits at <|startoftranscript|>, columns in ``_lang_ids`` order ->
        per row the ``top`` most likely languages with their probabilities (softmax over the
        language tokens alone, as openai/whisper's detect_language), most likely first:
        ``WindowResult.language_probs``, which a job's language vote reads
        (``stages.language``)."""
        p = lang_logits.float().softmax(dim=-1)
        values, index = p.topk(min(top, p.shape[-1]), dim=-1)
        return [
            tuple((self._id_to_lang[self._lang_ids[i]], round(v, 4)) for v, i in zip(vs, ix))
            for vs, ix in zip(values.tolist(), index.tolist())
        ]

    def _results(
        self,
        rows: list[list[int]],
        options: DecodeOptions,
        avg_logprobs: list[float] | None = None,
        no_speech: list[float] | None = None,
        temperatures: list[float] | None = None,
    ) -> list[WindowResult]:
        """Token rows ([previous text] + prompt + generated + padding) -> WindowResults, with
        each row's quality signals where given."""
        none = [None] * len(rows)
        avg_logprobs, no_speech = avg_logprobs or none, no_speech or none
        temperatures = temperatures or [0.0] * len(rows)
        tb, eot = self.timestamp_begin, self.eot
        pieces: list[tuple[int, float, float, bool, list[int]]] = []  # (row, start, end, open, ids)
        meta = []
        for r, row in enumerate(rows):
            # Previous text (a prompt: <|startofprev|> and its tokens) is no part of the
            # transcript: the row starts again at <|startoftranscript|>.
            if row and row[0] == self.prev_sot:
                row = row[row.index(self.sot) :] if self.sot in row else []
            # Prompt: <|startoftranscript|> [<|lang|> <|task|>]; the first generated token is
            # always a timestamp (the timestamp rules force it), so the prompt is the run of
            # special tokens at the start.
            p = 0
            while p < len(row) and eot <= row[p] < tb:
                p += 1
            generated = row[p:]
            n_tokens = generated.index(eot) + 1 if eot in generated else len(generated)
            language = self._language(row[:p], options)
            meta.append((language, n_tokens))
            for start, end, open_end, ids in self._split(generated[:n_tokens]):
                pieces.append((r, start, end, open_end, ids))

        texts = self.tokenizer.batch_decode([ids for *_, ids in pieces]) if pieces else []
        per_row: list[list[Segment]] = [[] for _ in rows]
        for (r, start, end, open_end, _), text in zip(pieces, texts):
            per_row[r].append(Segment(start=start, end=end, text=text, open_end=open_end))
        return [
            WindowResult(
                segments=tuple(segs),
                language=lang,
                n_tokens=n,
                avg_logprob=avg_logprobs[r],
                no_speech_prob=no_speech[r],
                compression_ratio=compression_ratio("".join(seg.text for seg in segs).strip()),
                temperature=temperatures[r],
            )
            for r, (segs, (lang, n)) in enumerate(zip(per_row, meta))
        ]

    def _language(self, prompt: list[int], options: DecodeOptions) -> str | None:
        for tok in prompt:
            if tok in self._id_to_lang:
                return self._id_to_lang[tok]
        return options.language or ("en" if not self.multilingual else None)

    def _split(self, tokens: list[int]):
        """Cut generated ids into segments: yields (start, end, open_end, text_ids).

        Mirrors the ASR pipeline's rules for one 30 s input: the first timestamp opens a
        segment, a repeat of the opening time is ignored, the next different timestamp
        closes it; special tokens are skipped. Text after the last closing timestamp is an
        open segment (starting at its opening timestamp, else at the last timestamp seen) (the speech runs past the window edge): its end is the window end,
        ``CHUNK_LENGTH``, since no later timestamp says where it stops. Segments without
        text tokens are dropped.
        """
        tb, eot = self.timestamp_begin, self.eot
        start: float | None = None
        last = 0.0  # last timestamp seen: the start of text that no timestamp opened
        ids: list[int] = []
        for tok in tokens:
            if tok >= tb:
                t = last = min(round((tok - tb) * TIME_PRECISION, 2), float(CHUNK_LENGTH))
                if start is None:
                    start = t
                elif t != start:
                    if ids:
                        yield start, t, False, ids
                    start, ids = None, []
            elif tok < eot:
                ids.append(tok)
        if ids:
            yield (start if start is not None else last), float(CHUNK_LENGTH), True, ids


def load_backend(spec: str, model: str, device: str | None = None, dtype: str | None = None):
    """Make an inference backend from a spec.

    "whisper" -> ``WhisperBackend``; "package.module:ClassName" -> that class, constructed
    as ``ClassName(model=model, device=device, dtype=dtype)`` (test doubles plug in here;
    they need ``prepare(audio)`` and ``transcribe(features, options)``).
    """
    if spec == "whisper":
        return WhisperBackend(model, device=device, dtype=dtype)
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(
            f"backend spec must be 'whisper' or 'package.module:ClassName', not {spec!r}"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import backend {spec!r}: {_one_line(exc)}") from exc
    return cls(model=model, device=device, dtype=dtype)
