"""PII redaction: placeholders for personal data and secrets, and the originals put back.

A :class:`Redactor` finds e-mail addresses, phone numbers, payment card numbers (Luhn-checked),
IBANs (checksum-checked), IP addresses and API keys (``SECRET``) with Presidio's analyzer and
replaces each with a placeholder through Presidio's anonymizer::

    redaction = redactor.redact("Mail jane@example.com or jane@example.com, not bob@example.org")
    redaction.text      # 'Mail <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_1>, not <EMAIL_ADDRESS_2>'
    redaction.found     # {'EMAIL_ADDRESS': 3}
    redaction.restore("Write to <EMAIL_ADDRESS_2>.")   # 'Write to bob@example.org.'

Placeholders are numbered per entity type and distinct value, in order of appearance;
:meth:`Redactor.redact_many` numbers a whole conversation at once, so an answer to it can be
restored whichever message a value came from. Detection is by patterns and checksums only: no
model is loaded or downloaded, nothing goes to the network, and every pattern runs in time
linear in the text. PERSON and LOCATION are detected only where a spaCy English model is
installed (``en_core_web_lg``, ``_md`` or ``_sm``) and a policy asks for them.

What to redact is a :class:`PiiPolicy`; :class:`PrivacyPolicies` resolves the one in force for a
tenant and a route (an operation such as ``query`` or ``chat.completions``, or an LLM route's
name): the default, overridden per tenant, overridden per route.

Importing this module is cheap: Presidio (which imports spaCy and torch, seconds) is imported
when a :class:`Redactor` first redacts, or in :meth:`Redactor.warm`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsloop.errors import ConfigError

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine, RecognizerResult
    from presidio_analyzer.nlp_engine import NlpArtifacts
    from presidio_anonymizer import AnonymizerEngine

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "NAMED_ENTITIES",
    "PATTERN_ENTITIES",
    "ConversationRedaction",
    "Finding",
    "PiiEntity",
    "PiiOverride",
    "PiiPolicy",
    "PiiSettings",
    "PrivacyPolicies",
    "Redaction",
    "Redactor",
    "trace_redactor",
]

log = logging.getLogger(__name__)

PiiEntity = Literal[
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "SECRET", "PERSON", "LOCATION"
]
"""What can be redacted; PERSON and LOCATION need an installed spaCy model."""
PATTERN_ENTITIES: tuple[PiiEntity, ...] = get_args(PiiEntity)[:6]
"""The entities found by patterns and checksums alone: the default of every policy."""
NAMED_ENTITIES: tuple[PiiEntity, ...] = get_args(PiiEntity)[6:]
"""The entities found by a spaCy model's named-entity recognizer, where one is installed."""
DEFAULT_SCORE_THRESHOLD = 0.4
"""Keeps phone numbers (0.4) and everything checked by a checksum or list (1.0) or parsed (0.6)."""

_PLACEHOLDER = re.compile(r"<[A-Z]{2,16}(?:_[A-Z]{2,16}){0,3}_[1-9][0-9]{0,8}>")
"""``<EMAIL_ADDRESS_1>``: bounded, so finding placeholders in an answer is linear."""
_WARM_UP = "Warm-up: ops@example.com, +44 20 7946 0958, 030 1234567, (212) 555-0143, 192.0.2.1."
_BATCH = 64
"""Entities handed to Presidio's anonymizer at once: it copies the text once per entity."""


class PiiPolicy(BaseModel):
    """What to redact.

    Attributes:
        enabled: redact what opsloop records (traces, logs) at all.
        entities: the entity types to find.
        redact_outbound: also redact a request before it leaves for an external backend (such
            as Anthropic), and restore the answer's placeholders.
        score_threshold: the least confidence a finding needs. Checksummed findings (cards,
            IBANs, e-mail domains, secrets) score 1.0, IP addresses 0.6, phone numbers 0.4
            (more with a context word such as "phone", where a spaCy model gives context).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    entities: tuple[PiiEntity, ...] = PATTERN_ENTITIES
    redact_outbound: bool = False
    score_threshold: float = Field(default=DEFAULT_SCORE_THRESHOLD, ge=0.0, le=1.0)

    @field_validator("entities")
    @classmethod
    def _unique(cls, entities: tuple[PiiEntity, ...]) -> tuple[PiiEntity, ...]:
        return tuple(dict.fromkeys(entities))


class PiiOverride(BaseModel):
    """Part of a policy, for a tenant or a route; what it leaves unset (None) is inherited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    entities: tuple[PiiEntity, ...] | None = None
    redact_outbound: bool | None = None
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    def apply(self, policy: PiiPolicy) -> PiiPolicy:
        """``policy`` with this override's set fields."""
        changes = self.model_dump(exclude_none=True)
        return PiiPolicy.model_validate({**policy.model_dump(), **changes}) if changes else policy


class PiiSettings(Protocol):
    """The settings :meth:`PrivacyPolicies.from_settings` reads (``opsloop.settings.Settings``)."""

    @property
    def pii_redaction(self) -> bool: ...  # noqa: D102
    @property
    def pii_entities(self) -> Sequence[PiiEntity]: ...  # noqa: D102
    @property
    def pii_redact_outbound(self) -> bool: ...  # noqa: D102
    @property
    def pii_score_threshold(self) -> float: ...  # noqa: D102
    @property
    def pii_tenants(self) -> Mapping[str, PiiOverride]: ...  # noqa: D102
    @property
    def pii_routes(self) -> Mapping[str, PiiOverride]: ...  # noqa: D102


class PrivacyPolicies:
    """The policy in force for a tenant and a route: default < tenant override < route override."""

    def __init__(
        self,
        default: PiiPolicy | None = None,
        *,
        tenants: Mapping[str, PiiOverride] | None = None,
        routes: Mapping[str, PiiOverride] | None = None,
    ) -> None:
        self.default = default or PiiPolicy()
        self.tenants = dict(tenants or {})
        self.routes = dict(routes or {})
        # Keyed by the overrides that apply, so at most (tenants + 1) x (routes + 1) entries.
        self._resolved: dict[tuple[str | None, str | None], PiiPolicy] = {}

    @classmethod
    def from_settings(cls, settings: PiiSettings) -> PrivacyPolicies:
        """The policies of the ``pii_*`` settings."""
        default = PiiPolicy(
            enabled=settings.pii_redaction,
            entities=tuple(settings.pii_entities),
            redact_outbound=settings.pii_redact_outbound,
            score_threshold=settings.pii_score_threshold,
        )
        return cls(default, tenants=settings.pii_tenants, routes=settings.pii_routes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyPolicies:
        """The policies of :meth:`to_dict`'s JSON (for a child process, say)."""
        return cls(
            PiiPolicy.model_validate(data.get("default", {})),
            tenants={name: PiiOverride.model_validate(o) for name, o in data.get("tenants", {}).items()},
            routes={name: PiiOverride.model_validate(o) for name, o in data.get("routes", {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """These policies as JSON-ready data; :meth:`from_dict` reads it back."""
        return {
            "default": self.default.model_dump(mode="json"),
            "tenants": {
                name: o.model_dump(mode="json", exclude_none=True) for name, o in self.tenants.items()
            },
            "routes": {name: o.model_dump(mode="json", exclude_none=True) for name, o in self.routes.items()},
        }

    def resolve(self, tenant: str | None = None, route: str | None = None) -> PiiPolicy:
        """The policy for ``tenant`` on ``route``; either may be None (no override applies)."""
        key = (tenant if tenant in self.tenants else None, route if route in self.routes else None)
        policy = self._resolved.get(key)
        if policy is None:
            policy = self.default
            for scope, overrides in zip(key, (self.tenants, self.routes), strict=True):
                if scope is not None:
                    policy = overrides[scope].apply(policy)
            self._resolved[key] = policy
        return policy


def trace_redactor(
    policies: PrivacyPolicies | Mapping[str, Any], redactor: Redactor | None = None
) -> Callable[[str, str, str], str]:
    """``redact(text, tenant, operation)`` for what is recorded: ``text`` under the policy in force.

    ``policies`` may be :meth:`PrivacyPolicies.to_dict`'s JSON. Where the policy of a tenant and
    operation is not ``enabled``, text passes unchanged (and Presidio is never loaded for it).
    """
    if not isinstance(policies, PrivacyPolicies):
        policies = PrivacyPolicies.from_dict(policies)
    resolve, redactor = policies.resolve, redactor or Redactor()

    def redact(text: str, tenant: str, operation: str) -> str:
        return redactor.redact(text, resolve(tenant, operation)).text

    return redact


@dataclass(frozen=True)
class Finding:
    """One piece of PII in a text: ``text[start:end]`` is an ``entity``, with confidence ``score``."""

    entity: str
    start: int
    end: int
    score: float


@dataclass(frozen=True, kw_only=True)
class _Placeholders:
    """Placeholders of one redaction and their original values, which never show in a repr."""

    found: dict[str, int]
    """Entity type -> how many spans of it were replaced."""
    originals: Mapping[str, str] = field(repr=False)
    """Placeholder -> the value it replaced."""

    def restore(self, answer: str) -> str:
        """``answer`` with this redaction's placeholders replaced by their original values.

        Placeholders the redaction did not make, or that an answer garbled, stay as they are.
        """
        if not self.originals or "<" not in answer:
            return answer
        return _PLACEHOLDER.sub(lambda m: self.originals.get(m.group(0), m.group(0)), answer)


@dataclass(frozen=True, kw_only=True)
class Redaction(_Placeholders):
    """One text with its PII replaced by placeholders such as ``<EMAIL_ADDRESS_1>``."""

    text: str


@dataclass(frozen=True, kw_only=True)
class ConversationRedaction(_Placeholders):
    """Several texts (a conversation's messages) redacted with one numbering of placeholders."""

    texts: list[str]


class Redactor:
    """Finds PII with Presidio's analyzer and replaces it through Presidio's anonymizer.

    Building the engines imports Presidio and takes seconds: it happens on the first call that
    redacts anything, or in :meth:`warm` (call that at start-up). One redactor serves any number
    of threads.

    Args:
        policy: the policy of calls that pass none.
        named_entities: detect PERSON and LOCATION with spaCy's NER when a policy asks for them;
            None: where a spaCy English model is installed (nothing is downloaded).
        phone_regions: regions whose national phone formats are recognized (numbers written
            with ``+`` and a country code are recognized for every region).
    """

    def __init__(
        self,
        policy: PiiPolicy | None = None,
        *,
        named_entities: bool | None = None,
        phone_regions: Sequence[str] | None = None,
    ) -> None:
        self.policy = policy or PiiPolicy()
        self._named_entities = named_entities
        self._phone_regions = tuple(phone_regions) if phone_regions is not None else None
        self._lock = threading.Lock()
        self._engines: _Engines | None = None

    def warm(self) -> None:
        """Import Presidio and build the engines now, not on the first redaction."""
        self._built()

    @property
    def supported_entities(self) -> frozenset[str]:
        """The entity types this redactor can find (PERSON and LOCATION only with a spaCy model)."""
        return self._built().supported

    def find(self, text: str, policy: PiiPolicy | None = None) -> list[Finding]:
        """The PII of ``policy`` in ``text``, in text order, no two findings overlapping."""
        return self._analyze([text], policy or self.policy)[0]

    def redact(self, text: str, policy: PiiPolicy | None = None) -> Redaction:
        """``text`` with the PII of ``policy`` (default: the redactor's) replaced by placeholders."""
        many = self.redact_many([text], policy)
        return Redaction(found=many.found, originals=many.originals, text=many.texts[0])

    def redact_many(self, texts: Iterable[str], policy: PiiPolicy | None = None) -> ConversationRedaction:
        """Each of ``texts`` redacted, one value getting one placeholder across all of them."""
        texts = list(texts)
        spans = self._analyze(texts, policy or self.policy)
        if not any(spans):
            return ConversationRedaction(found={}, originals={}, texts=texts)
        numbering = _Numbering(texts)
        for text, found in zip(texts, spans, strict=True):
            for span in found:
                numbering.placeholder(span.entity, text[span.start : span.end])
        anonymizer = self._built().anonymizer
        redacted = [
            _anonymize(anonymizer, text, found, numbering) if found else text
            for text, found in zip(texts, spans, strict=True)
        ]
        counts = Counter(span.entity for found in spans for span in found)
        return ConversationRedaction(found=dict(counts), originals=numbering.originals, texts=redacted)

    def _analyze(self, texts: list[str], policy: PiiPolicy) -> list[list[Finding]]:
        """Presidio's findings in each of ``texts``, overlaps resolved; no engine for nothing to do."""
        if not policy.enabled or not policy.entities or not any(text.strip() for text in texts):
            return [[] for _ in texts]
        engines = self._built()
        entities: list[str] = [entity for entity in policy.entities if entity in engines.supported]
        if not entities:  # Presidio would take an empty list for "every entity"
            return [[] for _ in texts]
        artifacts = None if engines.named and any(e in NAMED_ENTITIES for e in entities) else engines.empty
        return [
            _without_overlaps(
                engines.analyzer.analyze(
                    text,
                    language="en",
                    entities=entities,
                    score_threshold=policy.score_threshold,
                    nlp_artifacts=artifacts,
                )
            )
            if text.strip()
            else []
            for text in texts
        ]

    def _built(self) -> _Engines:
        engines = self._engines
        if engines is None:
            with self._lock:
                if self._engines is None:
                    self._engines = _Engines.build(self._named_entities, self._phone_regions)
                engines = self._engines
        return engines


@dataclass(frozen=True)
class _Engines:
    analyzer: AnalyzerEngine
    anonymizer: AnonymizerEngine
    empty: NlpArtifacts
    supported: frozenset[str]
    named: bool

    @classmethod
    def build(cls, named_entities: bool | None, phone_regions: tuple[str, ...] | None) -> _Engines:
        try:
            from opsloop import pii_recognizers as presidio
        except ImportError as exc:
            raise ConfigError(
                "PII redaction needs Presidio: pip install 'presidio-analyzer>=2.2.366' "
                "'presidio-anonymizer>=2.2.366'",
                setting="pii_redaction",
            ) from exc

        model = presidio.installed_spacy_model() if named_entities is not False else None
        if named_entities and model is None:
            log.warning(
                "PERSON and LOCATION are not redacted: no spaCy English model is installed (%s)",
                ", ".join(presidio.SPACY_MODELS),
            )
        analyzer = presidio.build_analyzer(model, phone_regions or presidio.PHONE_REGIONS)
        supported = frozenset(PATTERN_ENTITIES) | (frozenset(NAMED_ENTITIES) if model else frozenset())
        engines = cls(
            analyzer, presidio.build_anonymizer(), presidio.empty_artifacts(), supported, model is not None
        )
        # One call loads every recognizer, compiles its patterns and reads the phone metadata and
        # the public suffix list, before threads share them and so that no request waits for it.
        analyzer.analyze(_WARM_UP, language="en", entities=sorted(supported), nlp_artifacts=engines.empty)
        return engines


class _Numbering:
    """Placeholders by (entity type, value), numbered per type in order of appearance."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.originals: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._counts: Counter[str] = Counter()
        # A placeholder-like string already in the input is never handed out: restoring would
        # turn the user's own literal text into another value.
        self._taken = {
            match.group(0) for text in texts if "<" in text for match in _PLACEHOLDER.finditer(text)
        }

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        placeholder = self._by_value.get(key)
        if placeholder is None:
            while True:
                self._counts[entity] += 1
                placeholder = f"<{entity}_{self._counts[entity]}>"
                if placeholder not in self._taken:
                    break
            self._by_value[key] = placeholder
            self.originals[placeholder] = value
        return placeholder

    def of(self, entity: str) -> Callable[[str], str]:
        """The function Presidio's ``custom`` operator calls with each value of ``entity``."""
        return lambda value: self._by_value[(entity, value)]


def _without_overlaps(results: list[RecognizerResult]) -> list[Finding]:
    """Presidio's results as findings in text order, overlapping ones merged.

    A merged finding covers all of the text its parts did (nothing either recognizer saw leaks)
    and takes the entity of the more certain part, then of the longer one: a card number wins
    over a phone number found inside it.
    """
    kept: list[Finding] = []
    for r in sorted(results, key=lambda r: (r.start, -r.end)):
        found = Finding(r.entity_type, r.start, r.end, r.score)
        if kept and found.start < kept[-1].end:
            last = kept[-1]
            winner = max(last, found, key=lambda f: (f.score, f.end - f.start))
            kept[-1] = Finding(winner.entity, last.start, max(last.end, found.end), winner.score)
        else:
            kept.append(found)
    return kept


def _anonymize(anonymizer: AnonymizerEngine, text: str, spans: list[Finding], numbering: _Numbering) -> str:
    """``text`` with ``spans`` replaced through Presidio's anonymizer, :data:`_BATCH` at a time.

    Presidio rebuilds the whole text for each entity it replaces, which is quadratic in a long
    text full of PII; cut into pieces of at most ``_BATCH`` entities each, the work is linear.
    """
    from presidio_anonymizer.entities import OperatorConfig
    from presidio_anonymizer.entities import RecognizerResult as Span

    operators = {
        entity: OperatorConfig("custom", {"lambda": numbering.of(entity)})
        for entity in {span.entity for span in spans}
    }
    pieces: list[str] = []
    start = 0
    for first in range(0, len(spans), _BATCH):
        batch = spans[first : first + _BATCH]
        end = len(text) if first + _BATCH >= len(spans) else batch[-1].end
        shifted = [Span(s.entity, s.start - start, s.end - start, s.score) for s in batch]
        result = anonymizer.anonymize(text[start:end], shifted, operators, merge_entities_with_spaces=False)
        pieces.append(result.text)
        start = end
    return "".join(pieces)
