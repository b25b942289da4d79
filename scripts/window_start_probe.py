"""How one window's words depend on where the window starts (issue 8): decode the window
that holds second T, then the same window started a little earlier and later, and at the
first place where the decoder writes one of two competing spellings, print the
log-probabilities of their first tokens (where the decoder chose) and which one it took.

    python scripts/window_start_probe.py testsets/piper_joe_pauses.wav --at 150 \
        --spellings " namespace" " name space" [--model tiny.en] [--shifts=-1,-0.5,-0.25,0.25,0.5,1]

The window is the default plan's (``stages.chunk.plan_windows``); only its start moves, its
end stays. Decoding is transformers' ``generate`` with timestamps, greedy, on the window
alone: the slot engine gives each window these tokens in float32, so up to the position
where the pipeline's end-of-text veto or its review would step in, this is what the
pipeline writes for that window. The log-probabilities are the model's own, from one
teacher-forced pass over the decoded tokens, before the logits processors (which do not
reorder two text tokens that neither suppresses). A cell of the accuracy table decided by
a near tie at one token, which a quarter-second move of the start flips, is not a
systematic loss. ``--shifts`` with a leading minus needs the ``=`` form. Exit status 0
after a measurement, 2 on a bad argument (one line on stderr).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _seconds_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of seconds: {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("audio")
    ap.add_argument("--at", type=float, required=True, help="a second inside the window to probe")
    ap.add_argument("--spellings", nargs=2, required=True, metavar=("A", "B"),
                    help="two competing spellings whose first tokens differ, such as "
                         "' namespace' and ' name space' (mind the leading space)")  # fmt: skip
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--shifts", default="-1,-0.5,-0.25,0.25,0.5,1", type=_seconds_list,
                    help="seconds, comma-separated (a leading minus needs --shifts=...)")  # fmt: skip
    args = ap.parse_args(argv)

    from pipeline.constants import SAMPLE_RATE
    from pipeline.weights import ModelResolveError, check_model, resolve_model
    from stages.chunk import plan_windows
    from tests.media import read_audio

    try:
        audio = read_audio(args.audio)
    except subprocess.CalledProcessError as exc:
        why = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        print(f"error: cannot read {args.audio}: {why[-1] if why else 'ffmpeg failed'}", file=sys.stderr)
        return 2
    at = int(args.at * SAMPLE_RATE)
    win = next(((s, e) for s, e, _ in plan_windows(audio) if s <= at < e), None)
    if win is None:
        print(f"error: {args.at} s is not inside {args.audio}", file=sys.stderr)
        return 2

    import torch  # after the checks above: a wrong argument fails in a moment
    import transformers
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    warnings.simplefilter("ignore")
    transformers.utils.logging.set_verbosity_error()
    try:
        check_model(args.model)  # one line, in seconds, for a model that cannot load
        path = resolve_model(args.model)
    except ModelResolveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    proc = WhisperProcessor.from_pretrained(path)
    tok = proc.tokenizer
    spell = [tok.encode(t, add_special_tokens=False) for t in args.spellings]
    if not all(spell) or spell[0][0] == spell[1][0]:
        print(f"error: the spellings {args.spellings} must start with different tokens", file=sys.stderr)
        return 2
    ids = [sp[0] for sp in spell]
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    sot = model.generation_config.decoder_start_token_id

    def probe(start: int, end: int) -> str:
        feats = proc.feature_extractor(audio[start:end], sampling_rate=SAMPLE_RATE,
                                       return_tensors="pt").input_features  # fmt: skip
        with torch.no_grad():
            seq = model.generate(feats, return_timestamps=True)[0]
            if seq[0].item() != sot:  # generate may return the tokens without the prompt
                seq = torch.cat([torch.tensor([sot]), seq])
            lps = torch.log_softmax(model(input_features=feats, decoder_input_ids=seq[None]).logits[0].float(), -1)
        toks = seq.tolist()
        text = " ".join(tok.decode(toks, skip_special_tokens=True).split())
        for i in range(len(toks) - 1):
            k = next((k for k, sp in enumerate(spell) if toks[i + 1: i + 1 + len(sp)] == sp), None)
            if k is not None:
                a, b = (lps[i, j].item() for j in ids)
                took = args.spellings[k]
                before = " ".join(tok.decode(toks[max(0, i - 5): i + 1], skip_special_tokens=True).split())
                return f"took {took!r:14} log-p {a:7.3f} vs {b:7.3f}  after '...{before}'"
        return f"neither spelling written: {text[:80]!r}"

    s, e = win
    print(f"window {s / SAMPLE_RATE:.2f}-{e / SAMPLE_RATE:.2f} s; log-p of {args.spellings[0]!r} vs {args.spellings[1]!r} (first tokens)")
    for shift in [0.0] + args.shifts:
        start = min(max(0, s + int(shift * SAMPLE_RATE)), e - SAMPLE_RATE)
        label = "planned" if shift == 0 else f"start {shift:+.2f} s"
        print(f"{label:>15}: from {start / SAMPLE_RATE:7.2f} s, {probe(start, e)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
