"""What the FHIR capture keeps and answers: transaction Bundles and conditional writes, recorded.

A :class:`FhirStore` applies FHIR R4 RESTful semantics to what it is sent and remembers it, with
no I/O of its own (:class:`~passerelle_demo.peers.fhir_capture.FhirCapture` serves it over HTTP).
A resource sent as ``PUT Patient?identifier=system|value`` is created once and updated on
re-delivery, so the counts of unique resources prove that the broker delivers no duplicates;
``Bundle.identifier`` (the broker's envelope id) of every accepted Bundle is kept in arrival
order, so a repeat is a duplicate delivery and a missing id a loss.

Interactions (FHIR R4 RESTful API, http.html):

- transaction or batch Bundle → ``transaction-response`` / ``batch-response`` (all or nothing);
- ``POST Type``: create, or conditional create with ``ifNoneExist`` (in a Bundle entry);
- ``PUT Type?query``: conditional update; ``PUT Type/id``: update or create by id.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CAPABILITY", "Answer", "FhirStore", "StoredResource", "operation_outcome"]

CAPABILITY: Final[dict[str, Any]] = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "date": "2025-01-01",
    "kind": "instance",
    "software": {"name": "Passerelle FHIR capture"},
    "fhirVersion": "4.0.1",
    "format": ["json"],
    "rest": [
        {
            "mode": "server",
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "resource": [
                {
                    "type": t,
                    "interaction": [{"code": "create"}, {"code": "update"}],
                    "conditionalCreate": True,
                    "conditionalUpdate": True,
                }
                for t in ("Patient", "Encounter", "Observation", "DiagnosticReport", "Coverage")
            ],
        }
    ],
}
"""What ``GET [base]/metadata`` answers: a minimal CapabilityStatement for FHIR 4.0.1."""


def operation_outcome(code: str, diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome with one error issue (``code`` from the FHIR IssueType value set)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """What the store answers to one interaction, as a FHIR server would.

    Attributes:
        status: the HTTP status.
        payload: the JSON body (a resource, a response Bundle or an OperationOutcome).
        headers: extra headers (``Location``, ``ETag`` of a single-resource write).
    """

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] | None = None


@dataclass(slots=True)
class StoredResource:
    """One resource as the capture keeps it.

    Attributes:
        key: the conditional URL (``Patient?identifier=sys|val``) or ``Type/id`` it is stored under.
        resource_type: its FHIR type.
        id: the server-assigned id.
        version: 1 on creation, +1 per update.
        resource: the last JSON received (``{}`` when ``keep_bundles`` is off).
    """

    key: str
    resource_type: str
    id: str
    version: int
    resource: dict[str, Any]


class _Refused(Exception):
    """An interaction the store refuses: answered ``status`` with an OperationOutcome."""

    def __init__(self, status: int, diagnostics: str, code: str = "invalid") -> None:
        self.status = status
        self.diagnostics = diagnostics
        self.code = code
        super().__init__(diagnostics)


class FhirStore:
    """A recording FHIR store: applies creates and updates, counts, and remembers what came.

    Thread-safe: the server's thread writes while a test's thread reads.

    Args:
        base: the FHIR base path (``/fhir``), used in the ``Location`` of single writes.
        validate: validate each received Bundle with ``fhir.resources`` R4B (slow: keep it off
            in the benchmark); an invalid Bundle is answered 422.
        keep_bundles: keep every accepted Bundle in ``received`` and the last JSON of every
            stored resource (turn off for long benchmarks).
    """

    def __init__(self, base: str = "/fhir", validate: bool = False, *, keep_bundles: bool = True):
        self.base = "/" + base.strip("/") if base.strip("/") else ""
        self.validate = validate
        self.keep_bundles = keep_bundles
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []
        self._received_count = 0
        self._control_ids: list[str] = []
        self._arrivals: list[float] = []
        self._resources: dict[str, StoredResource] = {}
        self._statuses: Counter[int] = Counter()
        self._plain_creates: Counter[str] = Counter()
        self._invalid = 0
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:8]
        self._validator: Callable[[dict[str, Any]], object] | None = None

    # --- interactions ------------------------------------------------------------------------

    def transaction(self, body: bytes) -> Answer:
        """``POST [base]`` with a transaction or batch Bundle: every entry applied, or none."""
        try:
            return Answer(200, self._transaction(_json_object(body)))
        except _Refused as exc:
            return _refusal(exc)

    def write(self, method: str, url: str, body: bytes) -> Answer:
        """``POST [base]/Type``, ``PUT [base]/Type?query`` or ``PUT [base]/Type/id``: one resource.

        Args:
            method: ``POST`` or ``PUT``.
            url: the URL relative to the base, query included (``Patient?identifier=s|v``).
            body: the resource as JSON.
        """
        try:
            return self._single(method, url, _json_object(body))
        except _Refused as exc:
            return _refusal(exc)

    def count_status(self, status: int) -> None:
        """Count one response sent with ``status`` (see :meth:`status_counts`)."""
        with self._lock:
            self._statuses[status] += 1

    # --- what was received -------------------------------------------------------------------

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every accepted Bundle, in arrival order (empty when ``keep_bundles`` is off)."""
        with self._lock:
            return list(self._received)

    @property
    def received_count(self) -> int:
        """How many Bundles (or single resources) were accepted."""
        with self._lock:
            return self._received_count

    @property
    def count(self) -> int:
        """Alias of ``received_count``: accepted Bundles (or single resources)."""
        return self.received_count

    @property
    def invalid(self) -> int:
        """Bundles answered 422 because ``validate`` found them not valid FHIR R4B."""
        with self._lock:
            return self._invalid

    @property
    def envelope_ids(self) -> set[str]:
        """The distinct ``Bundle.identifier`` values received: one per envelope delivered."""
        with self._lock:
            return set(self._control_ids)

    @property
    def received_control_ids(self) -> list[str]:
        """``Bundle.identifier.value`` of every accepted Bundle, in arrival order, repeats kept.

        The broker sets it to the envelope id (system ``urn:passerelle:envelope``), so a repeat
        is a duplicate delivery and a missing id a loss.
        """
        with self._lock:
            return list(self._control_ids)

    def arrivals(self) -> list[tuple[str, float]]:
        """``(Bundle.identifier.value, epoch seconds)`` of every accepted Bundle, in order."""
        with self._lock:
            return list(zip(self._control_ids, self._arrivals, strict=True))

    def duplicate_control_ids(self) -> dict[str, int]:
        """Identifier values received more than once → how many times."""
        with self._lock:
            counts = Counter(self._control_ids)
        return {value: n for value, n in counts.items() if n > 1}

    def unique_resources(self) -> dict[str, int]:
        """Resource type → number of distinct resources.

        A conditional update or create counts once per conditional URL, an update by id once
        per id, and each plain ``POST`` (no ``ifNoneExist``) counts as a new resource.
        """
        with self._lock:
            counts = Counter(r.resource_type for r in self._resources.values())
            counts.update(self._plain_creates)
        return dict(counts)

    def stored(self, key: str) -> StoredResource | None:
        """The resource stored under ``key`` (``Patient?identifier=sys|val`` or ``Type/id``)."""
        with self._lock:
            return self._resources.get(key)

    def status_counts(self) -> dict[int, int]:
        """HTTP status → number of responses sent with it."""
        with self._lock:
            return dict(self._statuses)

    def reset(self) -> None:
        """Forget everything received and stored."""
        with self._lock:
            self._received.clear()
            self._received_count = 0
            self._control_ids.clear()
            self._arrivals.clear()
            self._resources.clear()
            self._statuses.clear()
            self._plain_creates.clear()
            self._invalid = 0

    # --- FHIR semantics ----------------------------------------------------------------------

    def _check(self, document: dict[str, Any]) -> None:
        if not self.validate:
            return
        if self._validator is None:
            from fhir.resources.R4B.bundle import Bundle  # slow import: only when validating

            self._validator = Bundle.model_validate
        try:
            self._validator(document)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            msg = f"the Bundle is not valid FHIR R4B: {exc.__class__.__name__}"
            errors = getattr(exc, "errors", None)
            if callable(errors):
                where = [".".join(str(p) for p in e.get("loc", ())) for e in errors()[:5]]
                msg += f" at {', '.join(where)}"
            with self._lock:
                self._invalid += 1
            raise _Refused(422, msg) from None

    def _transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if bundle.get("resourceType") != "Bundle":
            raise _Refused(400, "POST to the base expects a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise _Refused(400, "the Bundle type must be transaction or batch")
        self._check(bundle)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise _Refused(400, "Bundle.entry must be an array")
        # Check every entry before storing any: a transaction succeeds or fails as a whole.
        requests: list[tuple[str, str, dict[str, Any], Any]] = []
        for index, entry in enumerate(entries):
            request = entry.get("request") if isinstance(entry, dict) else None
            resource = entry.get("resource") if isinstance(entry, dict) else None
            method = str((request or {}).get("method", "")).upper()
            if method not in ("POST", "PUT") or not isinstance(resource, dict):
                msg = f"Bundle.entry[{index}] needs a resource and request.method POST or PUT"
                raise _Refused(400, msg)
            assert request is not None
            requests.append(
                (method, str(request.get("url", "")), resource, request.get("ifNoneExist"))
            )
        responses = []
        with self._lock:
            for method, url, resource, if_none_exist in requests:
                status, stored = self._store(method, url, resource, if_none_exist)
                responses.append(
                    {
                        "response": {
                            "status": "201 Created" if status == 201 else "200 OK",
                            "location": f"{stored.resource_type}/{stored.id}"
                            f"/_history/{stored.version}",
                            "etag": f'W/"{stored.version}"',
                        }
                    }
                )
            self._record(bundle)
        return {
            "resourceType": "Bundle",
            "id": self._new_id(),
            "type": f"{kind}-response",
            "entry": responses,
        }

    def _single(self, method: str, url: str, resource: dict[str, Any]) -> Answer:
        if not isinstance(resource.get("resourceType"), str):
            raise _Refused(400, "the body is not a FHIR resource (no resourceType)")
        with self._lock:
            status, stored = self._store(method, url, resource, None)
            self._record(resource)
            answer = {
                **stored.resource,
                "id": stored.id,
                "meta": {"versionId": str(stored.version)},
            }
        location = f"{self.base}/{stored.resource_type}/{stored.id}/_history/{stored.version}"
        return Answer(status, answer, {"Location": location, "ETag": f'W/"{stored.version}"'})

    def _store(
        self, method: str, url: str, resource: dict[str, Any], if_none_exist: Any
    ) -> tuple[int, StoredResource]:
        """Apply one create or update to the store (lock held); return (status, stored)."""
        path, _, query = url.partition("?")
        resource_type = str(resource.get("resourceType") or path.split("/")[0])
        if method == "PUT":
            key = url if query else path  # conditional update or Type/id update (RESTful API)
        elif if_none_exist:
            key = f"{path}?{if_none_exist}"  # conditional create
            found = self._resources.get(key)
            if found is not None:
                return 200, found
        else:
            # A plain create always makes a new resource: counted, not stored (the benchmark
            # sends hundreds of thousands).
            self._plain_creates[resource_type] += 1
            return 201, StoredResource("", resource_type, self._new_id(), 1, {})
        kept = resource if self.keep_bundles else {}
        found = self._resources.get(key)
        if found is not None:
            found.version += 1
            found.resource = kept
            return 200, found
        rid = path.split("/")[1] if method == "PUT" and "/" in path else self._new_id()
        stored = StoredResource(key, resource_type, rid, 1, kept)
        self._resources[key] = stored
        return 201, stored

    def _new_id(self) -> str:
        # A counter, not uuid4: uuid4 costs more than the rest of a request's bookkeeping.
        return f"{self._id_prefix}{next(self._ids):x}"

    def _record(self, document: dict[str, Any]) -> None:
        """Count one accepted request and keep its identifier (lock held)."""
        self._received_count += 1
        if self.keep_bundles:
            self._received.append(document)
        identifier = (
            document.get("identifier") if document.get("resourceType") == "Bundle" else None
        )
        if isinstance(identifier, dict) and identifier.get("value"):
            self._control_ids.append(str(identifier["value"]))
            self._arrivals.append(time.time())


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "the body is not JSON", "structure") from None
    if not isinstance(document, dict):
        raise _Refused(400, "the body is not a JSON object", "structure")
    return document


def _refusal(exc: _Refused) -> Answer:
    return Answer(exc.status, operation_outcome(exc.code, exc.diagnostics))
