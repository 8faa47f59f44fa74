"""A small IAM policy evaluator: enough to decide whether IoT may assume a stream role and read an object.

How this works: a request is an action, an optional resource, an optional service principal and a few condition
keys. A statement applies when its Action (or NotAction), Resource (or NotResource), Principal and Condition all
match. The answer is the IAM rule: an applying Deny wins, else an applying Allow allows, else denied.

What is evaluated (everything else makes a statement not apply, so an Allow the evaluator does not understand
denies, which is the safe direction for a test tool):
- ``Action``/``NotAction`` with ``*`` and ``?`` wildcards, case-insensitive; ``Resource``/``NotResource`` with
  wildcards, case-sensitive; ``Principal`` ``"*"``, ``{"AWS": "*"}`` or ``{"Service": ...}`` (``NotPrincipal`` is
  not supported);
- ``Condition`` operators ``String(Not)Equals``, ``StringEqualsIgnoreCase``, ``String(Not)Like``,
  ``Arn(Not)Equals``, ``Arn(Not)Like``, each also with ``IfExists``; a key absent from the request makes a
  positive operator false (true with ``IfExists``) and a negated one true, as IAM does. Condition key names are
  case-insensitive. Policy variables (``${...}``) are not expanded.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessRequest:
    action: str
    resource: str | None = None  # None: the statement's Resource is not checked (trust policies)
    service_principal: str | None = None  # None: the statement's Principal is not checked (identity policies)
    context: Mapping[str, str] = field(default_factory=dict)  # condition keys, e.g. aws:SourceAccount


def is_allowed(documents: Iterable[str], request: AccessRequest) -> bool:
    """IAM's answer for ``request`` under all ``documents`` (JSON texts) together."""
    allowed = False
    for document in documents:
        for statement in _statements(document):
            if not _applies(statement, request):
                continue
            if statement.get("Effect") == "Deny":
                return False
            if statement.get("Effect") == "Allow":
                allowed = True
    return allowed


@functools.lru_cache(maxsize=256)
def _statements(document: str) -> tuple[Mapping[str, Any], ...]:
    try:
        parsed = json.loads(document)
    except ValueError:
        log.warning("ignoring a policy document that is not JSON: %.80r", document)
        return ()
    statements = parsed.get("Statement", []) if isinstance(parsed, dict) else []
    if isinstance(statements, dict):
        statements = [statements]
    return tuple(s for s in statements if isinstance(s, dict))


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


@functools.lru_cache(maxsize=1024)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _glob_match(globs: Iterable[str], value: str, *, ignore_case: bool) -> bool:
    return any(_pattern(g, ignore_case).fullmatch(value) for g in globs)


def _applies(statement: Mapping[str, Any], request: AccessRequest) -> bool:
    if "NotPrincipal" in statement:
        return False
    if "Action" in statement:
        if not _glob_match(_as_list(statement["Action"]), request.action, ignore_case=True):
            return False
    elif "NotAction" in statement:
        if _glob_match(_as_list(statement["NotAction"]), request.action, ignore_case=True):
            return False
    else:
        return False
    if request.resource is not None:
        if "Resource" in statement:
            if not _glob_match(_as_list(statement["Resource"]), request.resource, ignore_case=False):
                return False
        elif "NotResource" in statement:
            if _glob_match(_as_list(statement["NotResource"]), request.resource, ignore_case=False):
                return False
        else:
            return False
    if request.service_principal is not None and not _principal_matches(statement.get("Principal"), request):
        return False
    return _conditions_hold(statement.get("Condition", {}), request.context)


def _principal_matches(principal: Any, request: AccessRequest) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    if "*" in _as_list(principal.get("AWS")):
        return True
    return request.service_principal in _as_list(principal.get("Service"))


_OPERATORS = {
    "StringEquals": (False, False, False),  # (negated, like, ignore_case)
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, False, True),
    "StringLike": (False, True, False),
    "StringNotLike": (True, True, False),
    "ArnEquals": (False, False, False),
    "ArnLike": (False, True, False),
    "ArnNotEquals": (True, False, False),
    "ArnNotLike": (True, True, False),
}


def _conditions_hold(conditions: Any, context: Mapping[str, str]) -> bool:
    if not isinstance(conditions, dict):
        return False
    lowered = {k.lower(): v for k, v in context.items()}
    for operator, clauses in conditions.items():
        if_exists = operator.endswith("IfExists")
        spec = _OPERATORS.get(operator.removesuffix("IfExists"))
        if spec is None or not isinstance(clauses, dict):
            log.debug("condition operator %s is not evaluated: the statement does not apply", operator)
            return False
        negated, like, ignore_case = spec
        for key, expected in clauses.items():
            actual = lowered.get(str(key).lower())
            if actual is None:
                if not (if_exists or negated):
                    return False
                continue
            values = _as_list(expected) if not isinstance(expected, (int, bool)) else [str(expected)]
            if like:
                matched = _glob_match(values, actual, ignore_case=False)
            elif ignore_case:
                matched = actual.lower() in (v.lower() for v in values)
            else:
                matched = actual in values
            if matched == negated:
                return False
    return True
