"""Whisper's languages: codes, names, and turning what a user typed into a code.

Shared by the CLI (``--language``) and the worker (``"language"``), so both accept the same
spellings and say the same thing about a wrong one.
"""

from __future__ import annotations

# Whisper's languages (code -> name), as openai/whisper's tokenizer.py lists them; a test
# checks this equals transformers' table. Kept here because importing that table costs
# seconds of the first request (it pulls in the tokenizer stack).
LANGUAGES = dict(
    pair.replace("_", " ").split(":")
    for pair in (
        "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french "
        "ja:japanese pt:portuguese tr:turkish pl:polish ca:catalan nl:dutch ar:arabic "
        "sv:swedish it:italian id:indonesian hi:hindi fi:finnish vi:vietnamese he:hebrew "
        "uk:ukrainian el:greek ms:malay cs:czech ro:romanian da:danish hu:hungarian "
        "ta:tamil no:norwegian th:thai ur:urdu hr:croatian bg:bulgarian lt:lithuanian "
        "la:latin mi:maori ml:malayalam cy:welsh sk:slovak te:telugu fa:persian "
        "lv:latvian bn:bengali sr:serbian az:azerbaijani sl:slovenian kn:kannada "
        "et:estonian mk:macedonian br:breton eu:basque is:icelandic hy:armenian "
        "ne:nepali mn:mongolian bs:bosnian kk:kazakh sq:albanian sw:swahili gl:galician "
        "mr:marathi pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba so:somali "
        "af:afrikaans oc:occitan ka:georgian be:belarusian tg:tajik sd:sindhi "
        "gu:gujarati am:amharic yi:yiddish lo:lao uz:uzbek fo:faroese "
        "ht:haitian_creole ps:pashto tk:turkmen nn:nynorsk mt:maltese sa:sanskrit "
        "lb:luxembourgish my:myanmar bo:tibetan tl:tagalog mg:malagasy as:assamese "
        "tt:tatar haw:hawaiian ln:lingala ha:hausa ba:bashkir jw:javanese su:sundanese "
        "yue:cantonese"
    ).split()
)
TO_LANGUAGE_CODE = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
}




def language_code(value: str) -> str | None:
    """The Whisper code for ``value`` (a code such as ``en`` or a name such as ``English``,
    any case); None for ``auto``/``detect``/empty. Raises ValueError (one line) otherwise."""
    v = value.strip().lower()
    if v in ("", "auto", "detect"):
        return None
    if v in LANGUAGES:
        return v
    if v in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[v]
    raise ValueError(f"{clip(value, 40)!r} is not a Whisper language")


def codes_list() -> str:
    """Every accepted code once, sorted: ``af, am, ar, ...``."""
    return ", ".join(sorted(set(LANGUAGES)))


def clip(value, limit: int = 200) -> str:
    """``value`` as text, cut to about ``limit`` characters (request values are echoed in
    messages and logs; one once echoed 170,811 characters)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
