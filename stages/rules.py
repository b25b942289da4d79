"""Token rules for the slot engine (``stages.engine``), as batched tensor ops on per-slot state.

In the engine every slot is at its own step of its own window, so the rules cannot read
"the step" from the length of a shared ``input_ids`` as transformers' processors do.
Instead each slot keeps a little state that the rules need (tokens generated so far, whether
the last two were timestamps, the last timestamp's value), updated in O(1) per step by
``advance``: no history is re-read, no loop over rows, no device->host copy.

- ``SlotRules``: exactly the logits processors greedy ``generate`` builds for the kwargs of
  ``WhisperBackend.generate_kwargs`` (printed from ``generate`` for tiny.en and base with
  transformers 4.57), in its order: ``MinLength`` / ``MinNewTokensLength`` (forced
  ``tokens_per_window`` only), ``SuppressTokens``, ``SuppressTokensAtBegin``, then the
  timestamp rules of ``stages.infer.BatchedTimestampRules``.
- ``SlotSampler``: then ``StepRecorder`` semantics (with its ``EotVeto``): the end-of-text
  veto, the log-probability of the picked token, and per-window Gumbel sampling for rows
  with a fallback temperature, each window from its own generator seeded by its seed.

Shapes: ``S`` slots; a call works on the first ``m`` slots (rows ``0..m-1``), scores
``(m, V)`` float32.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from stages.infer import EotVeto

NEG_INF = -float("inf")


def host_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-1)`` for a CPU float32/float64 tensor, by numpy: the same index
    (the first maximum; a NaN counts as the maximum, its first one), in a seventh of the
    time. torch's CPU argmax does not vectorise (1.2 ms for 16 x 51,864 float32 on this
    machine's 2 cores, against 0.16 ms for numpy's SIMD argmax: 3% of a 16-slot step).
    Other devices and dtypes go to torch."""
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64):
        return scores.argmax(dim=-1)
    return torch.from_numpy(np.argmax(scores.numpy(), axis=-1))


def _veto_defaults() -> dict[str, float]:
    """EotVeto's thresholds (min_left_s, min_sound_s, grace_s, max_vetoes, max_no_speech):
    one source."""
    params = inspect.signature(EotVeto.__init__).parameters
    return {k: params[k].default for k in ("min_left_s", "min_sound_s", "grace_s", "max_vetoes", "max_no_speech")}


class SlotRules:
    """generate's logits processors for greedy, timestamped Whisper decoding, per slot.

    ``eos``, ``timestamp_begin``, ``no_timestamps``, ``max_initial`` (index or None),
    ``detect_from_logprob``: as in ``WhisperTimeStampLogitsProcessor``; ``suppress`` and
    ``begin_suppress``: token ids (generation config). State per slot (S,) tensors:
    ``n`` tokens generated, ``min_new`` (end-of-text forbidden while ``n < min_new``),
    ``last_ts`` / ``penult_ts`` (last / second-to-last generated token is a timestamp; both
    start True so that after one token "the one before" counts as a timestamp, as
    ``BatchedTimestampRules`` has it), ``last_val`` (the last timestamp, in 20 ms steps)
    and ``has_ts``.
    """

    def __init__(
        self,
        slots: int,
        vocab: int,
        *,
        eos: int,
        timestamp_begin: int,
        no_timestamps: int,
        max_initial: int | None,
        detect_from_logprob: bool,
        suppress=(),
        begin_suppress=(),
        device="cpu",
    ):
        self.eos, self.tb, self.no_ts = eos, timestamp_begin, no_timestamps
        self.max_initial, self.detect = max_initial, detect_from_logprob
        # Written column by column: a vocabulary-wide mask would read and write every score.
        self.suppress_ids = torch.as_tensor(sorted(set(suppress)), dtype=torch.long, device=device)
        # On the CPU a row mask is read on the host and only its rows are written (a
        # masked_fill over (m, V) reads and writes every row; the rules were 11% of a CPU
        # step at 8 slots before). On CUDA that read would wait for the device, so the
        # masks stay on the device.
        self.host = torch.device(device).type == "cpu"
        self.begin_ids = torch.as_tensor(list(begin_suppress), dtype=torch.long, device=device)
        self.cols = torch.arange(vocab - timestamp_begin, device=device)  # timestamp values
        z = lambda dtype: torch.zeros(slots, dtype=dtype, device=device)  # noqa: E731
        self.n, self.min_new, self.last_val = z(torch.long), z(torch.long), z(torch.long)
        self.last_ts, self.penult_ts, self.has_ts = z(torch.bool), z(torch.bool), z(torch.bool)

    @classmethod
    def for_backend(cls, backend, slots: int) -> "SlotRules":
        """The rules ``generate`` applies for ``backend.generate_kwargs(...)``: read from
        the same generation config and timestamp processor that ``generate`` builds."""
        from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

        gc = backend.model.generation_config
        ts = WhisperTimeStampLogitsProcessor(gc, begin_index=1)
        return cls(
            slots,
            backend.model.config.vocab_size,
            eos=ts.eos_token_id,
            timestamp_begin=ts.timestamp_begin,
            no_timestamps=ts.no_timestamps_token_id,
            max_initial=ts.max_initial_timestamp_index,
            detect_from_logprob=ts._detect_timestamp_from_logprob,
            suppress=gc.suppress_tokens or (),
            begin_suppress=gc.begin_suppress_tokens or (),
            device=backend.device,
        )

    def reset(self, rows: torch.Tensor, min_new: torch.Tensor) -> None:
        """A new window in each slot of ``rows`` (k,) long; ``min_new`` (k,) long."""
        self.n[rows] = 0
        self.min_new[rows] = min_new
        self.last_val[rows] = 0
        self.last_ts[rows] = True
        self.penult_ts[rows] = True
        self.has_ts[rows] = False

    def state(self) -> list[torch.Tensor]:
        """The per-slot state tensors (S, ...), for moving a window to another slot."""
        return [self.n, self.min_new, self.last_val, self.last_ts, self.penult_ts, self.has_ts]

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: (m, V) float32 logits of slots 0..m-1, written in place and returned."""
        m = scores.shape[0]
        n, tb = self.n[:m], self.tb
        first = n == 0
        # MinLength + MinNewTokensLength: no end-of-text before the forced length.
        scores[:, self.eos].masked_fill_(n < self.min_new[:m], NEG_INF)
        # SuppressTokens, then SuppressTokensAtBegin (the first generated position only).
        scores.index_fill_(1, self.suppress_ids, NEG_INF)
        if len(self.begin_ids):
            begin = scores[:, self.begin_ids]
            scores[:, self.begin_ids] = begin.masked_fill(first[:, None], NEG_INF)
        # Timestamp rules (BatchedTimestampRules, with the history replaced by the state).
        scores[:, self.no_ts] = NEG_INF
        ts_scores = scores[:, tb:]  # view: writes land in ``scores``
        later = ~first
        last, penult = self.last_ts[:m], self.penult_ts[:m]
        single = later & last & ~penult  # a segment was just closed: no text now
        ts_scores.masked_fill_((later & last & penult)[:, None], NEG_INF)
        self._fill_rows(scores[:, : self.eos], single)
        last_val = self.last_val[:m]
        lowest = torch.where(single, last_val, last_val + 1)
        lowest = torch.where(self.has_ts[:m] & later, lowest, torch.zeros_like(lowest))
        ts_scores.masked_fill_(self.cols[None, :] < lowest[:, None], NEG_INF)
        # First generated token: a timestamp, no later than max_initial.
        self._fill_rows(scores[:, :tb], first)
        if self.max_initial is not None:
            self._fill_rows(scores[:, tb + self.max_initial + 1 :], first)
        if self.detect:
            logprobs = torch.nn.functional.log_softmax(scores.float(), dim=-1)
            timestamp_logprob = logprobs[:, tb:].logsumexp(dim=-1)
            max_text_token_logprob = logprobs[:, :tb].amax(dim=-1)  # max's values, vectorised
            prefer_ts = timestamp_logprob > max_text_token_logprob
            self._fill_rows(scores[:, :tb], prefer_ts)
        return scores

    def _fill_rows(self, block: torch.Tensor, rows: torch.Tensor) -> None:
        """-inf into the rows of ``block`` (m, k), a view of the scores, where ``rows`` (m,)."""
        if not self.host:
            block.masked_fill_(rows[:, None], NEG_INF)
        else:  # (``block[rows] = -inf`` would be a masked_fill over every row again)
            at = rows.nonzero().squeeze(1)
            if len(at):
                block.index_fill_(0, at, NEG_INF)

    def advance(self, picked: torch.Tensor, live: torch.Tensor) -> None:
        """Slots 0..m-1 took ``picked`` (m,) long; only ``live`` (m,) bool slots move on."""
        m = picked.shape[0]
        is_ts = picked >= self.tb
        self.n[:m] += live.long()
        self.penult_ts[:m] = torch.where(live, self.last_ts[:m], self.penult_ts[:m])
        self.last_ts[:m] = torch.where(live, is_ts, self.last_ts[:m])
        took_ts = live & is_ts
        self.last_val[:m] = torch.where(took_ts, picked - self.tb, self.last_val[:m])
        self.has_ts[:m] |= took_ts


class SlotSampler:
    """The last rule: ``StepRecorder`` (and its ``EotVeto``) per slot.

    Per slot: ``sum_logprob`` (float64) and ``count`` of the picked tokens' log-probabilities
    under the fully processed, un-noised distribution (end-of-text included); the veto's
    sound profile (``cum`` padded with its last value, ``valid`` seconds, ``active``) and
    vetoes ``left``; for a window with a temperature > 0, its own ``torch.Generator``
    seeded by its seed, drawing V uniforms at each of its steps, as ``StepRecorder`` does.
    """

    FRAMES = 601  # sound_profile of a 30 s window: 600 frames of 50 ms, plus the 0 before

    def __init__(self, slots: int, eos: int, timestamp_begin: int, device="cpu"):
        self.eos, self.tb, self.device = eos, timestamp_begin, device
        self.host = torch.device(device).type == "cpu"  # see ``__call__``
        for k, v in _veto_defaults().items():
            setattr(self, k, v)
        self.sum_logprob = torch.zeros(slots, dtype=torch.float64, device=device)
        self.count = torch.zeros(slots, dtype=torch.long, device=device)
        self.cum = torch.zeros((slots, self.FRAMES), dtype=torch.float32, device=device)
        self.valid = torch.zeros(slots, dtype=torch.float32, device=device)
        self.active = torch.zeros(slots, dtype=torch.bool, device=device)
        self.left = torch.zeros(slots, dtype=torch.long, device=device)
        self.hot: dict[int, tuple[float, torch.Generator]] = {}

    def reset(self, slot: int, temperature: float = 0.0, seed: int = 0, sound=None, no_speech=None) -> None:
        """A new window in ``slot``: ``sound`` None or (valid_s, cum) as for ``EotVeto``;
        ``no_speech`` its no-speech probability where known (else ``heard``, at its first
        step): over ``max_no_speech`` the veto stays out of the window (see ``EotVeto``)."""
        self.sum_logprob[slot] = 0.0
        self.count[slot] = 0
        self.left[slot] = self.max_vetoes
        self.active[slot] = sound is not None and (no_speech is None or no_speech <= self.max_no_speech)
        if sound is not None:
            valid_s, cum = sound
            cum = np.asarray(cum, dtype=np.float32)
            if len(cum) > self.cum.shape[1]:  # (never for a 30 s window) widen every row
                pad = self.cum[:, -1:].expand(-1, len(cum) - self.cum.shape[1])
                self.cum = torch.cat([self.cum, pad], dim=1)
            row = np.full(self.cum.shape[1], cum[-1], dtype=np.float32)
            row[: len(cum)] = cum
            self.cum[slot] = torch.from_numpy(row).to(self.device)
            self.valid[slot] = float(valid_s)
        self.hot.pop(slot, None)
        if temperature > 0:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(seed))
            self.hot[slot] = (float(temperature), g)

    def release(self, slot: int) -> None:
        self.hot.pop(slot, None)

    def heard(self, idx: torch.Tensor, no_speech: torch.Tensor) -> None:
        """Slots ``idx`` read their no-speech probabilities at their first step (English-only
        models with no prompt): the veto stays out of those over ``max_no_speech``."""
        self.active[idx] &= no_speech <= self.max_no_speech

    def state(self) -> list[torch.Tensor]:
        """The per-slot state tensors (S, ...), for moving a window to another slot."""
        return [self.sum_logprob, self.count, self.cum, self.valid, self.active, self.left]

    def move(self, src: int, dst: int) -> None:
        """The window of ``src`` now lives in ``dst`` (its generator goes with it)."""
        self.hot.pop(dst, None)
        if src in self.hot:
            self.hot[dst] = self.hot.pop(src)

    def _veto(self, scores, live, last_val, has_ts, last_ts) -> tuple[torch.Tensor, torch.Tensor]:
        """EotVeto: mask end-of-text where the window still has sound after the last
        timestamp. Same arithmetic as ``EotVeto.__call__``, last timestamp from the state.
        Writes ``scores`` in place; returns their argmax before the veto and the rows vetoed."""
        m = scores.shape[0]
        left = self.left[:m]
        best = host_argmax(scores)  # torch.argmax off the CPU
        # Only after a timestamp: text after the last one is a segment left open, which
        # Whisper ends with end-of-text to say it runs to the window's end (see EotVeto).
        wants_eos = (best == self.eos) & live & self.active[:m] & (left > 0) & last_ts
        last_val = last_val.clamp(min=0).float()
        last_t = torch.where(has_ts, last_val * 0.02, torch.zeros_like(last_val))
        cum = self.cum[:m]
        frame = ((last_t + self.grace_s) / EotVeto.FRAME_S).long().clamp(0, cum.shape[1] - 1)
        after = cum[:, -1] - cum.gather(1, frame[:, None]).squeeze(1)
        left_s = self.valid[:m] - last_t
        veto = wants_eos & (left_s >= self.min_left_s) & (after >= self.min_sound_s)
        scores[:, self.eos].masked_fill_(veto, NEG_INF)
        left -= veto.long()
        return best, veto

    def __call__(self, scores: torch.Tensor, live: torch.Tensor, rules: SlotRules) -> torch.Tensor:
        """scores: (m, V) processed by ``rules`` (written in place); live: (m,) bool.
        Returns the picked tokens (m,) long and records the live rows' log-probabilities."""
        m = scores.shape[0]
        best, vetoed = self._veto(scores, live, rules.last_val[:m], rules.has_ts[:m], rules.last_ts[:m])  # in place
        logprobs = torch.nn.functional.log_softmax(scores.float(), dim=-1)
        for slot, (t, g) in self.hot.items():
            if slot < m:
                u = torch.rand(scores.shape[1], generator=g, device=scores.device)
                gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
                scores[slot] += (t * gumbel).to(scores.dtype)
        if self.host:
            # Only the rows the veto or the noise changed since ``_veto``'s argmax are
            # picked again (a second pass over all of (m, V) was a few percent of a CPU
            # step); on CUDA that choice would wait for the device, so all rows are.
            picked, again = best, vetoed.clone()
            again[[slot for slot in self.hot if slot < m]] = True
            if bool(again.any()):
                picked[again] = host_argmax(scores[again])
        else:
            picked = scores.argmax(dim=-1)
        lp = logprobs.gather(1, picked[:, None]).squeeze(1)
        self.sum_logprob[:m] += torch.where(live, lp, 0.0).double()
        self.count[:m] += live.long()
        return picked

    def avg_logprob(self, slots: list[int]) -> list[float]:
        """Per slot: summed log-probability / tokens (end-of-text included), as StepRecorder."""
        idx = torch.as_tensor(slots, device=self.sum_logprob.device)
        return (self.sum_logprob[idx] / self.count[idx].clamp(min=1)).tolist()
