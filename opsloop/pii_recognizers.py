"""Presidio's analyzer and anonymizer, set up to run offline and in linear time.

Imported only by :class:`opsloop.privacy.Redactor` when it first redacts (or warms up):
Presidio imports spaCy and, through its transformers NLP engine, torch (5-7 s on a cold
start), which nothing else in the kernel should pay for.

What differs from Presidio's defaults, and why:

- No NLP model. The analyzer runs Presidio's ``NoOpNlpEngine`` (empty artifacts), so no spaCy
  model is loaded or downloaded; named entities (PERSON, LOCATION) come from spaCy's NER only
  where a spaCy English model is installed (:func:`installed_spacy_model`).
- E-mail addresses. Presidio's pattern has adjacent unbounded quantifiers over the same
  characters: 16 KB of ``a.a.a.`` followed by ``@`` took 41 s here, holding the GIL, and after
  its 60 s regex timeout Presidio skips the pattern silently. :class:`EmailRecognizer` bounds
  every repetition and starts only where a run of address characters starts. Its domain check
  uses tldextract's bundled public suffix list: tldextract's module-level extractor fetches the
  list from the internet on first use (and waits on the network where that is blocked).
- Phone numbers. python-phonenumbers' matcher gives up after 65,535 invalid candidates, so a
  long text could hide a number behind junk; :class:`PhoneRecognizer` matches in windows.
- Secrets. :class:`SecretRecognizer` finds API keys of the common shapes (OpenAI, Anthropic,
  AWS, GitHub, Slack, Google, Stripe, JWTs, opsloop's own ``olk_`` keys).

Every pattern here has bounded repetitions and, where a body is long, starts only at the start
of a token, so each token is tried once and a scan is linear in the text's length.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator, Sequence
from importlib.util import find_spec
from typing import cast

import regex
import tldextract
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer import RecognizerResult as Found
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    IbanRecognizer,
    IpRecognizer,
)
from presidio_analyzer.predefined_recognizers import PhoneRecognizer as _PresidioPhoneRecognizer
from presidio_anonymizer import AnonymizerEngine

__all__ = [
    "PHONE_REGIONS",
    "SPACY_MODELS",
    "EmailRecognizer",
    "PhoneRecognizer",
    "SecretRecognizer",
    "build_analyzer",
    "build_anonymizer",
    "empty_artifacts",
    "installed_spacy_model",
]

log = logging.getLogger(__name__)

LANGUAGE = "en"
SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm")
"""spaCy English models used for PERSON and LOCATION, the first one installed; none is fetched."""
PHONE_REGIONS = ("US", "GB", "DE")
"""Regions whose national formats are matched; a number with a ``+`` country code matches in any.

Each region is one more pass of the matcher, and each adds false positives: with India's, the
10-digit Unix timestamps of a log line became Indian phone numbers.
"""

_CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE


def installed_spacy_model() -> str | None:
    """The first of :data:`SPACY_MODELS` that is installed, without importing spaCy; else None."""
    return next((name for name in SPACY_MODELS if find_spec(name) is not None), None)


class EmailRecognizer(PatternRecognizer):
    """E-mail addresses whose domain ends in a public suffix (tldextract's bundled list)."""

    # Local part up to 64 characters, starting where a run of its characters starts; 1-8 domain
    # labels of up to 63, and a top-level label of letters. Bounded, so a failed start costs at
    # most ~600 steps, and mid-run starts fail on the lookbehind at once.
    PATTERNS = [  # noqa: RUF012  (Presidio's class attribute)
        Pattern(
            "Email (bounded)",
            r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9\-]{1,63}\.){1,8}[A-Za-z]{2,63}"
            r"(?![A-Za-z0-9\-])",
            0.5,
        )
    ]

    def __init__(self) -> None:
        super().__init__(supported_entity="EMAIL_ADDRESS", patterns=self.PATTERNS, context=["email"])
        # No URLs and no cache folder: the snapshot of the list in tldextract's wheel, nothing else.
        self._suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        """True when the domain ends in a known public suffix (``example.com``, not ``a.b``)."""
        return self._suffixes(pattern_text.rpartition("@")[2]).fqdn != ""


class PhoneRecognizer(_PresidioPhoneRecognizer):
    """Presidio's phone numbers (python-phonenumbers, valid numbers only), looked for where they can be.

    The matcher parses every group of digits it meets, once per region: most of the time of a
    redaction (70 of 90 ms on 20,000 characters of ops questions). It runs here only on windows
    around runs of digits and separators that hold at least :attr:`MIN_DIGITS` digits (a number
    as it is dialled, trunk prefix or country code included, has more), with :attr:`BEFORE` and
    :attr:`AFTER` characters around
    (for its checks of what surrounds a number, and for extensions such as "ext. 12"): a third
    less time on digit-heavy text, and the same numbers.

    The matcher also stops for good after 65,535 invalid candidates; no window is longer than
    :attr:`WINDOW` characters, so later numbers of a long text are still found. Where a window is
    cut, the pieces overlap by :attr:`OVERLAP` characters, more than any number's length, and a
    match is kept by the piece it starts in (outside the overlap): none is lost at a seam.
    """

    WINDOW = 8192
    OVERLAP = 128
    MIN_DIGITS = 6
    BEFORE = 4
    AFTER = 16

    # Digits and the separators python-phonenumbers accepts between them; one greedy repetition
    # with nothing after it, so nothing to backtrack into.
    _DIGIT_RUN = regex.compile(
        r"\d[\d\s()\[\]+\-./~\u00ad\u200b\u2060\u2010-\u2015\u2212\u2053\u223c\u30fc"
        r"\uff08\uff09\uff0d-\uff0f\uff3b\uff3d\uff5e]*"
    )

    def __init__(self, regions: Sequence[str] = PHONE_REGIONS) -> None:
        super().__init__(supported_regions=tuple(regions))

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[Found]:
        """Phone numbers of ``text``, less those inside identifiers."""
        artifacts = cast("NlpArtifacts", nlp_artifacts)  # Presidio's annotation omits its default, None
        found: list[Found] = []
        for start, end, keep in self._windows(text):
            for result in super().analyze(text[start:end], entities, artifacts):
                if result.start < keep:
                    result.start += start
                    result.end += start
                    if not _inside_identifier(text, result):
                        found.append(result)
        return list(EntityRecognizer.remove_duplicates(found))

    def _windows(self, text: str) -> Iterator[tuple[int, int, int]]:
        """``(start, end, keep)``: look in ``text[start:end]``, keep matches starting before ``keep``."""
        merged: list[list[int]] = []
        for run in self._DIGIT_RUN.finditer(text):
            if sum(c.isdigit() for c in run.group()) < self.MIN_DIGITS:
                continue
            start, end = max(run.start() - self.BEFORE, 0), min(run.end() + self.AFTER, len(text))
            if merged and start <= merged[-1][1]:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        step = self.WINDOW - self.OVERLAP
        for start, end in merged:
            while end - start > self.WINDOW:
                yield start, start + self.WINDOW, step
                start += step
            yield start, end, end - start


def _inside_identifier(text: str, found: Found) -> bool:
    """Whether a number is joined by ``-`` or ``_`` to letters or digits (``ORD-2024-000183``).

    Order, ticket and invoice ids are full of digit groups that are valid phone numbers
    somewhere (2024-000183 is one in Washington, DC); a phone number is not glued to a word.
    """
    before, after = text[max(found.start - 2, 0) : found.start], text[found.end : found.end + 2]
    glued_before = len(before) == 2 and before[1] in "-_" and before[0].isalnum()
    glued_after = len(after) == 2 and after[0] in "-_" and after[1].isalnum()
    return glued_before or glued_after


_RUN_START = r"(?<![A-Za-z0-9_\-])"
"""Secrets start where a run of key characters starts: each run is tried once, so long bodies stay linear."""


class SecretRecognizer(PatternRecognizer):
    """API keys and tokens of the common vendors' shapes, as entity ``SECRET``.

    A match must hold a digit and a letter past its prefix (random keys do; words joined by
    hyphens do not), and a JWT's header must decode to a JSON object.
    """

    PATTERNS = [  # noqa: RUF012  (Presidio's class attribute)
        # sk-..., sk-proj-..., sk-svcacct-...; Anthropic's sk-ant-api03-... has the same shape.
        Pattern("OpenAI or Anthropic key", _RUN_START + r"sk-[A-Za-z0-9_\-]{20,256}", 0.9),
        Pattern("AWS access key id", _RUN_START + r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])", 0.9),
        Pattern("GitHub token", _RUN_START + r"(?:gh[pousr]_[A-Za-z0-9]{30,251}|github_pat_\w{22,244})", 0.9),
        Pattern("Slack token", _RUN_START + r"xox[abprs]-[A-Za-z0-9\-]{10,250}", 0.9),
        Pattern("Google API key", _RUN_START + r"AIza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])", 0.9),
        Pattern("Stripe key", _RUN_START + r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}", 0.9),
        Pattern(
            "JWT",
            _RUN_START + r"eyJ[A-Za-z0-9_\-]{8,4096}\.eyJ[A-Za-z0-9_\-]{8,8192}\.[A-Za-z0-9_\-]{0,2048}",
            0.9,
        ),
        Pattern("opsloop key", _RUN_START + r"olk_[0-9a-f]{12}_[A-Za-z0-9_\-]{32,64}", 0.9),
    ]

    _PREFIX = regex.compile(
        r"(?:sk-(?:ant-|proj-|svcacct-|admin-)?|AKIA|ASIA|gh._|github_pat_|xox.-|AIza|"
        r"(?:sk|rk)_(?:live|test)_|olk_)"
    )

    def __init__(self) -> None:
        super().__init__(
            supported_entity="SECRET",
            patterns=self.PATTERNS,
            context=["key", "token", "secret", "api"],
            global_regex_flags=_CASE_SENSITIVE,
        )

    def validate_result(self, pattern_text: str) -> bool:
        """True for a random-looking body, and for a JWT whose header is a JSON object."""
        if pattern_text.startswith("eyJ"):
            return _json_object(pattern_text.partition(".")[0])
        prefix = self._PREFIX.match(pattern_text)
        body = pattern_text[prefix.end() if prefix else 0 :]
        return any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


def _json_object(segment: str) -> bool:
    """Whether ``segment`` is base64url of a JSON object (a JWT's header)."""
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return isinstance(json.loads(decoded), dict)
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False


_CARD = Pattern(
    "Card number",
    # Presidio's pattern with Mastercard's 2221-2720 range added (it misses those since 2017).
    r"\b(?!1\d{12}(?!\d))(4\d{3}|5[0-5]\d{2}|2(?:22[1-9]|2[3-9]\d|[3-6]\d{2}|7[01]\d|720)|6\d{3}|1\d{3}|3\d{3})"
    r"[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})\b",
    0.3,
)


def _recognizers(phone_regions: Sequence[str]) -> Iterator[EntityRecognizer]:
    yield EmailRecognizer()
    yield PhoneRecognizer(phone_regions)
    yield CreditCardRecognizer(patterns=[_CARD])  # Luhn-checked
    yield IbanRecognizer()  # checksum-checked; bounded
    yield IpRecognizer()  # checked by the ipaddress module; bounded
    yield SecretRecognizer()


def build_analyzer(spacy_model: str | None, phone_regions: Sequence[str] = PHONE_REGIONS) -> AnalyzerEngine:
    """The analyzer: the pattern recognizers, plus spaCy's NER when ``spacy_model`` is given.

    ``spacy_model`` must be installed (see :func:`installed_spacy_model`): Presidio would
    otherwise download it.
    """
    registry = RecognizerRegistry(
        recognizers=list(_recognizers(phone_regions)), supported_languages=[LANGUAGE]
    )
    nlp: NlpEngine
    if spacy_model is None:
        nlp = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    else:
        nlp = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": spacy_model}])
    nlp.load()
    if spacy_model is not None:
        registry.add_nlp_recognizer(nlp_engine=nlp)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[LANGUAGE])


def empty_artifacts() -> NlpArtifacts:
    """NLP artifacts of no tokens: what the analyzer is given when no named entity is asked for."""
    engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    engine.load()
    return engine.process_text("", LANGUAGE)


def build_anonymizer() -> AnonymizerEngine:
    """Presidio's anonymizer (the placeholders are its ``custom`` operator's, per entity type)."""
    return AnonymizerEngine()
