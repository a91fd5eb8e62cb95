"""The Swagger 2.0 and ARM keywords jsonschema's draft 4 lacks: the validators :mod:`._openapi` runs.

``x-nullable``, extensible enums (``x-ms-enum.modelAsString``), ``readOnly`` properties that a request need
not send, the discriminator dispatch and the inherited ``additionalProperties: false`` (which ``_openapi``
writes into the documents as ``x-aml-dispatch`` and ``x-aml-closed``), and the formats ARM uses.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.validators import extend

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = ["FORMATS", "REQUEST_VALIDATOR", "RESPONSE_VALIDATOR"]

# Integer ranges of the int32 and int64 formats.
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# A GUID in its 8-4-4-4-12 hex form (the uuid format).
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# ISO 8601 durations as ARM uses them (PT30M, PT1800S, P1DT2H...).
_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")

# --- Swagger keywords on top of draft 4 ---------------------------------------------------------------

_DRAFT4 = Draft4Validator.VALIDATORS


def _nullable(keyword: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a keyword so that ``null`` passes wherever the schema says ``x-nullable: true``."""

    @functools.wraps(keyword)
    def check(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
        if instance is None and schema.get("x-nullable") is True:
            return None
        return keyword(validator, value, instance, schema)

    return check


def _enum(validator: Any, enums: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    extensible = bool((schema.get("x-ms-enum") or {}).get("modelAsString"))
    if extensible and isinstance(instance, str):
        if not any(isinstance(e, str) and e.lower() == instance.lower() for e in enums):
            yield ValidationError(f"{instance!r} is not one of {list(enums)} (compared case-insensitively)")
        return
    yield from _DRAFT4["enum"](validator, enums, instance, schema) or ()


def _required_in_request(
    validator: Any, required: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties") or {}
    for name in required:
        if name not in instance and not (properties.get(name) or {}).get("readOnly"):
            yield ValidationError(f"{name!r} is a required property")


def _dispatch(validator: Any, spec: Any, instance: Any, _schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """Validate a polymorphic value against the subtype its discriminator names."""
    prop = spec["property"]
    value = instance.get(prop) if isinstance(instance, dict) else None
    if not isinstance(value, str):
        # Not an object, or no discriminator: the base reports the type or the missing property.
        yield from validator.descend(instance, {"$ref": spec["base"]})
        return
    target = spec["choices"].get(value.lower())
    if target is None:
        yield ValidationError(f"{value!r} is not a known {prop}; expected one of {spec['values']}", path=(prop,))
        return
    yield from validator.descend(instance, {"$ref": target})


def _closed(_validator: Any, allowed: Any, instance: Any, _schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """``additionalProperties: false`` over the whole inherited model."""
    if not isinstance(instance, dict):
        return
    extra = sorted(set(instance) - set(allowed))
    if extra:
        listed = ", ".join(repr(name) for name in extra)
        yield ValidationError(
            f"additional properties are not allowed ({listed} unexpected)",
            path=(extra[0],) if len(extra) == 1 else (),
        )


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    def _int_range(low: int, high: int) -> Callable[[object], bool]:
        def check(instance: object) -> bool:
            return not isinstance(instance, int) or isinstance(instance, bool) or low <= instance <= high

        return check

    checker.checks("int32")(_int_range(*_INT32))
    checker.checks("int64")(_int_range(*_INT64))

    @checker.checks("uuid")
    def _uuid(instance: object) -> bool:
        return not isinstance(instance, str) or bool(_UUID.fullmatch(instance))

    @checker.checks("date-time")
    def _date_time(instance: object) -> bool:
        if not isinstance(instance, str):
            return True
        try:
            datetime.fromisoformat(instance.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return False
        return "T" in instance.upper()

    @checker.checks("duration")
    def _duration(instance: object) -> bool:
        return not isinstance(instance, str) or bool(_DURATION.fullmatch(instance))

    return checker


def _validator_class(*, request: bool) -> Any:
    keywords: dict[str, Callable[..., Any]] = dict(_DRAFT4)
    keywords["enum"] = _enum
    if request:
        keywords["required"] = _required_in_request
    keywords["x-aml-dispatch"] = _dispatch
    keywords["x-aml-closed"] = _closed
    # jsonschema's stubs leave extend() untyped; it returns a validator class.
    return extend(Draft4Validator, {name: _nullable(fn) for name, fn in keywords.items()})  # type: ignore[no-untyped-call]


REQUEST_VALIDATOR = _validator_class(request=True)
RESPONSE_VALIDATOR = _validator_class(request=False)
FORMATS = _format_checker()
