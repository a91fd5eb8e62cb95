"""Validate ARM request and response bodies against the official Azure OpenAPI (Swagger 2.0) specs.

The specs are read, never copied, from a folder laid out like ``Azure/azure-rest-api-specs`` (its
``specification/`` tree), so every relative ``$ref`` resolves as it does upstream. Validation is
``jsonschema`` (draft 4, which Swagger 2.0 schemas are based on) with ``$ref`` resolution across files
through a ``referencing`` registry, plus what Swagger and the ARM extensions add to plain JSON Schema:

* ``discriminator`` / ``x-ms-discriminator-value``: a polymorphic base (``Compute``, ``Datastore``...)
  dispatches on its discriminator property to the subtype that names that value; an unknown value is an
  error that lists the known ones.
* Inheritance through ``allOf``: a base's ``additionalProperties: false`` applies to the whole derived
  model (the union of the properties along the ``allOf`` chain), not to each part separately as plain
  JSON Schema would have it.
* ``x-ms-enum.modelAsString: true`` (extensible enums): compared case-insensitively, since real clients
  send ``dedicated`` or ``Userassigned`` and the service takes them.
* ``x-nullable: true``: ``null`` is accepted.
* ``readOnly``: tolerated in requests (a client may send back what it read), and a read-only property
  listed in ``required`` is not required in a request.
* ``format``: ``int32``, ``int64``, ``uuid``, ``date-time`` and ``duration`` are checked.

The transformation happens on in-memory copies of the documents; the files are never written.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import referencing

from aml_identity.errors import AmlIdentityError
from aml_identity.testing.arm._swagger import FORMATS, REQUEST_VALIDATOR, RESPONSE_VALIDATOR

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Mapping

__all__ = [
    "SPEC_ENTRY_FILES",
    "ArmSpecs",
    "Example",
    "Operation",
    "SpecFinding",
    "SpecsNotFoundError",
    "find_specs_dir",
]

# The entry documents the emulator answers for, relative to the specs folder. Every other file they
# reference (common types, registries, private links...) is loaded from the same tree.
_ML = "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/stable/2025-12-01"
SPEC_ENTRY_FILES: Mapping[str, str] = {
    "compute": f"{_ML}/machineLearningServices.json",
    "workspaces": f"{_ML}/workspaceRP.json",
    "datastores": f"{_ML}/mfe.json",
    "roleAssignments": (
        "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/"
        "authorization-RoleAssignmentsCalls.json"
    ),
    "locks": "specification/resources/resource-manager/Microsoft.Authorization/stable/2020-05-01/locks.json",
    "identities": (
        "specification/msi/resource-manager/Microsoft.ManagedIdentity/ManagedIdentity/stable/2026-05-31/"
        "ManagedIdentity.json"
    ),
}
# ARM's async-operation status body is not an operation of any spec; common-types v3 defines it.
_OPERATION_STATUS = "specification/common-types/resource-management/v3/types.json#/definitions/OperationStatusResult"
_ENV_SPECS_DIR = "AML_IDENTITY_SPECS_DIR"
# Suffix of the in-memory "base view" of a definition: what a derived model inherits through allOf.
_BASE_VIEW = "__aml_base"
_DEFINITION_REF = re.compile(r"^(?P<doc>[^#]*)#/definitions/(?P<name>[^/]+)$")
_HTTP_METHODS = frozenset({"get", "put", "post", "patch", "delete", "head", "options"})


class SpecsNotFoundError(AmlIdentityError, FileNotFoundError):
    """The official OpenAPI specs the ARM emulator validates against are not where it looked."""


@dataclass(frozen=True)
class SpecFinding:
    """One way a body does not match its schema.

    Attributes:
        path: The JSON path of the offending value (``$`` is the body itself), e.g.
            ``$.properties.properties.scaleSettings``.
        message: What is wrong there.
    """

    path: str
    message: str

    def __str__(self) -> str:
        """Return ``path: message``."""
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Operation:
    """One operation of a spec, with where its request and response schemas live.

    Attributes:
        operation_id: The spec's ``operationId`` (``Compute_CreateOrUpdate``).
        method: The HTTP method, upper case.
        path: The path template.
        api_version: The spec's ``info.version``.
        request_schema: Absolute ``$ref`` of the body parameter's schema, or None without a body.
        responses: Status code (or ``"default"``) -> absolute ``$ref`` of its schema (None: no body).
        long_running: Whether the spec marks it ``x-ms-long-running-operation``.
    """

    operation_id: str
    method: str
    path: str
    api_version: str
    request_schema: str | None
    responses: Mapping[str, str | None]
    long_running: bool


@dataclass(frozen=True)
class Example:
    """A saved ``x-ms-examples`` file of an operation.

    Attributes:
        operation_id: The operation it illustrates.
        path: The example file.
        request_body: The body parameter's value, or None when the operation takes no body.
        responses: Status code -> response body (None when the example shows none).
    """

    operation_id: str
    path: Path
    request_body: Any
    responses: Mapping[str, Any] = field(default_factory=dict)


def find_specs_dir(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Locate the folder holding the official specs (the one with ``specification/`` in it).

    Looks at ``explicit``, then ``$AML_IDENTITY_SPECS_DIR``, then a ``shared/specs`` folder beside or above
    the checkout this module runs from and the current directory (CI keeps ``../shared/specs`` next to the
    clone).

    Args:
        explicit: A folder given by the caller.
        environ: The environment to read; ``os.environ`` when omitted.

    Returns:
        The specs folder.

    Raises:
        SpecsNotFoundError: None of those places holds the specs; the message lists where it looked.
    """
    from aml_identity._environment import JobEnvironment  # noqa: PLC0415 - avoid an import cycle at load

    tried: list[str] = []
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    else:
        configured = JobEnvironment.from_environ(environ).specs_dir
        if configured:
            candidates.append(Path(configured))
        else:
            for start in (Path(__file__).resolve(), Path.cwd().resolve()):
                candidates.extend(folder / "shared" / "specs" for folder in start.parents)
    for candidate in candidates:
        if (candidate / SPEC_ENTRY_FILES["compute"]).is_file():
            return candidate
        tried.append(str(candidate))
    shown = ", ".join(tried[:6]) + (" ..." if len(tried) > 6 else "")  # noqa: PLR2004 - message length
    msg = (
        "The official Azure OpenAPI specs were not found (looked for "
        f"{SPEC_ENTRY_FILES['compute']} under: {shown}). Pass specs_dir=, set {_ENV_SPECS_DIR} to the folder "
        "that holds their specification/ tree (laid out as in Azure/azure-rest-api-specs), or keep it as "
        "../shared/specs beside the checkout."
    )
    raise SpecsNotFoundError(msg)


def _json_path(path: Iterator[Any] | Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _split_ref(base_uri: str, ref: str) -> tuple[str, str]:
    uri, fragment = urldefrag(urljoin(base_uri, ref))
    return uri, fragment


# --- loading and transforming the documents -------------------------------------------------------------


class _Documents:
    """All spec documents of a folder, by file URI, transformed for validation."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.docs: dict[str, Any] = {}
        spec_tree = root / "specification"
        for path in sorted(spec_tree.rglob("*.json")):
            if "examples" in path.relative_to(spec_tree).parts:
                continue
            self.docs[path.resolve().as_uri()] = json.loads(path.read_text(encoding="utf-8"))
        self._views: set[tuple[str, str]] = set()
        self._transform()

    def uri(self, relative: str) -> str:
        return (self.root / relative).resolve().as_uri()

    def node(self, uri: str, fragment: str) -> Any:
        contents = self.docs[uri]
        if fragment:
            for raw in fragment.lstrip("/").split("/"):
                segment = raw.replace("~1", "/").replace("~0", "~")
                contents = contents[int(segment)] if isinstance(contents, list) else contents[segment]
        return contents

    def deref(self, base_uri: str, node: Any) -> tuple[str, str, Any]:
        """Follow ``$ref`` chains from ``node`` (in ``base_uri``); return (uri, fragment, target)."""
        uri, fragment = base_uri, ""
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 32:  # noqa: PLR2004 - cycle guard
            uri, fragment = _split_ref(uri, node["$ref"])
            node = self.node(uri, fragment)
            seen += 1
        return uri, fragment, node

    # The transformation, in order: base views, allOf rewrites, closed models, discriminator dispatch.
    def _transform(self) -> None:
        targets: set[tuple[str, str]] = set()
        for uri, doc in self.docs.items():
            for schema in _walk(doc):
                for member in schema.get("allOf") or ():
                    if isinstance(member, dict) and "$ref" in member:
                        target = self._definition_key(uri, member["$ref"])
                        if target:
                            targets.add(target)
        originals = {key: copy.deepcopy(self.docs[key[0]]["definitions"][key[1]]) for key in targets}
        for key in sorted(targets):
            self._make_view(key, originals)
        for uri, doc in self.docs.items():
            for schema in _walk(doc):
                if "allOf" in schema and not schema.get("x-aml-view"):
                    schema["allOf"] = [self._view_member(uri, member) for member in schema["allOf"]]
        self._close_models()
        self._add_dispatch()

    def _definition_key(self, base_uri: str, ref: str) -> tuple[str, str] | None:
        uri, fragment = _split_ref(base_uri, ref)
        match = re.match(r"^/definitions/([^/]+)$", fragment)
        if not match or uri not in self.docs or match.group(1).endswith(_BASE_VIEW):
            return None
        return uri, match.group(1)

    def _view_member(self, uri: str, member: Any) -> Any:
        if isinstance(member, dict) and "$ref" in member and not member["$ref"].endswith(_BASE_VIEW):
            key = self._definition_key(uri, member["$ref"])
            if key:
                return {"$ref": member["$ref"] + _BASE_VIEW}
        if isinstance(member, dict) and "$ref" not in member:
            return _as_base(member)
        return member

    def _make_view(self, key: tuple[str, str], originals: Mapping[tuple[str, str], Any]) -> None:
        uri, name = key
        view = _as_base(originals[key])
        view["x-aml-view"] = True
        view["allOf"] = [self._view_member(uri, member) for member in view.get("allOf") or ()]
        if not view["allOf"]:
            del view["allOf"]
        self.docs[uri]["definitions"][name + _BASE_VIEW] = view
        self._views.add(key)

    def _property_union(self, uri: str, schema: Any, seen: set[int] | None = None) -> set[str]:
        seen = seen if seen is not None else set()
        if id(schema) in seen or not isinstance(schema, dict):
            return set()
        seen.add(id(schema))
        names = set((schema.get("properties") or {}).keys())
        for member in schema.get("allOf") or ():
            member_uri, _, target = self.deref(uri, member)
            names |= self._property_union(member_uri, target, seen)
        return names

    def _close_models(self) -> None:
        for uri, doc in self.docs.items():
            for name, definition in list((doc.get("definitions") or {}).items()):
                if (
                    isinstance(definition, dict)
                    and definition.get("additionalProperties") is False
                    and definition.get("allOf")
                    and not definition.get("x-aml-view")
                ):
                    del definition["additionalProperties"]
                    definition["x-aml-closed"] = sorted(self._property_union(uri, definition))
                    doc["definitions"][name] = definition

    def _definitions(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for uri, doc in self.docs.items():
            for name, definition in list((doc.get("definitions") or {}).items()):
                if isinstance(definition, dict) and not definition.get("x-aml-view"):
                    yield uri, name, definition

    def _children(self) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
        """Map each base definition to the definitions deriving from it, with their discriminator values."""
        children: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for uri, name, definition in self._definitions():
            for member in definition.get("allOf") or ():
                ref = member.get("$ref", "") if isinstance(member, dict) else ""
                parent = self._definition_key(uri, ref[: -len(_BASE_VIEW)]) if ref.endswith(_BASE_VIEW) else None
                if parent:
                    value = definition.get("x-ms-discriminator-value", name)
                    children.setdefault(parent, []).append((uri, name, value))
        return children

    def _add_dispatch(self) -> None:
        children = self._children()
        bases = [
            (uri, name, definition)
            for uri, name, definition in self._definitions()
            if definition.get("discriminator") and (uri, name) in self._views  # else: nothing derives from it
        ]
        for uri, name, definition in bases:
            base_ref = f"{uri}#/definitions/{quote(name + _BASE_VIEW)}"
            choices = {definition.get("x-ms-discriminator-value", name).lower(): base_ref}
            values: list[str] = []
            pending = [(uri, name)]
            while pending:  # every descendant, not only the direct children
                for child_uri, child, value in children.get(pending.pop(), []):
                    if value.lower() not in choices:
                        choices[value.lower()] = f"{child_uri}#/definitions/{quote(child)}"
                        values.append(value)
                        pending.append((child_uri, child))
            dispatch: dict[str, Any] = {
                "x-aml-dispatch": {
                    "property": definition["discriminator"],
                    "base": base_ref,
                    "choices": choices,
                    "values": sorted(values),
                }
            }
            dispatch.update({k: definition[k] for k in ("description", "x-nullable", "readOnly") if k in definition})
            self.docs[uri]["definitions"][name] = dispatch


def _as_base(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` as a derived model inherits it: no discriminator, not closed on its own."""
    view = dict(schema)
    view.pop("discriminator", None)
    if view.get("additionalProperties") is False:
        del view["additionalProperties"]
    view.pop("x-aml-closed", None)
    return view


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Yield every dict in a JSON tree (schemas and everything else), skipping examples."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            yield current
            stack.extend(v for k, v in current.items() if k not in ("x-ms-examples", "example", "examples"))
        elif isinstance(current, list):
            stack.extend(current)


# --- the public face -------------------------------------------------------------------------------------


class ArmSpecs:
    """The official specs of the APIs the ARM emulator serves, ready to validate bodies.

    Load once per folder with :meth:`load` (cached); then validate with :meth:`request_errors`,
    :meth:`response_errors` and :meth:`schema_errors`.
    """

    def __init__(self, root: Path) -> None:
        """Read and index every spec under ``root`` (use :meth:`load`, which caches)."""
        self.root = root
        self._documents = _Documents(root)
        self._registry: referencing.Registry[Any] = referencing.Registry().with_resources(
            (uri, referencing.Specification.OPAQUE.create_resource(contents))
            for uri, contents in self._documents.docs.items()
        )
        self.operations: dict[str, Operation] = {}
        self._examples: list[Example] = []
        for relative in SPEC_ENTRY_FILES.values():
            self._index(self._documents.uri(relative))

    @classmethod
    def load(
        cls, specs_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> ArmSpecs:
        """Return the (cached) specs of ``specs_dir`` or the folder :func:`find_specs_dir` finds."""
        return _load_cached(find_specs_dir(specs_dir, environ).resolve())

    def _index(self, uri: str) -> None:
        doc = self._documents.docs[uri]
        api_version = str(doc.get("info", {}).get("version", ""))
        for path, item in (doc.get("paths") or {}).items():
            shared = item.get("parameters") or []
            for method, op in item.items():
                if method not in _HTTP_METHODS:
                    continue
                request_schema = None
                for parameter in [*shared, *(op.get("parameters") or [])]:
                    p_uri, p_fragment, resolved = self._documents.deref(uri, parameter)
                    if resolved.get("in") == "body":
                        pointer = p_fragment or self._pointer_of(doc, path, method, parameter)
                        request_schema = f"{p_uri}#{quote(pointer + '/schema', safe='/~')}"
                responses: dict[str, str | None] = {}
                for status, response in (op.get("responses") or {}).items():
                    r_uri, r_fragment, resolved = self._documents.deref(uri, response)
                    if "schema" in resolved:
                        pointer = r_fragment or f"/paths/{_escape(path)}/{method}/responses/{_escape(status)}"
                        responses[status] = f"{r_uri}#{quote(pointer + '/schema', safe='/~')}"
                    else:
                        responses[status] = None
                operation = Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    path=path,
                    api_version=api_version,
                    request_schema=request_schema,
                    responses=responses,
                    long_running=bool(op.get("x-ms-long-running-operation")),
                )
                self.operations.setdefault(operation.operation_id, operation)
                self._collect_examples(uri, operation, op)

    @staticmethod
    def _pointer_of(doc: Mapping[str, Any], path: str, method: str, parameter: Any) -> str:
        parameters = doc["paths"][path][method].get("parameters") or []
        if parameter in parameters:
            return f"/paths/{_escape(path)}/{method}/parameters/{parameters.index(parameter)}"
        shared = doc["paths"][path].get("parameters") or []
        return f"/paths/{_escape(path)}/parameters/{shared.index(parameter)}"

    def _collect_examples(self, uri: str, operation: Operation, op: Mapping[str, Any]) -> None:
        base = Path(url2pathname(urlsplit(uri).path)).parent
        body_name = None
        for parameter in op.get("parameters") or []:
            _, _, resolved = self._documents.deref(uri, parameter)
            if resolved.get("in") == "body":
                body_name = resolved.get("name")
        for entry in (op.get("x-ms-examples") or {}).values():
            path = (base / entry.get("$ref", "")).resolve()
            if not path.is_file():
                continue  # only some examples are saved beside the specs; skip the others
            example = json.loads(path.read_text(encoding="utf-8"))
            responses = {
                str(status): (response or {}).get("body")
                for status, response in (example.get("responses") or {}).items()
            }
            request = (example.get("parameters") or {}).get(body_name) if body_name else None
            self._examples.append(Example(operation.operation_id, path, request, responses))

    def examples(self) -> list[Example]:
        """Return the saved ``x-ms-examples`` of the indexed operations (missing files are skipped)."""
        return list(self._examples)

    def operation(self, operation_id: str) -> Operation:
        """Return the operation named ``operation_id``.

        Raises:
            KeyError: No indexed spec has it.
        """
        try:
            return self.operations[operation_id]
        except KeyError:
            msg = f"no operation {operation_id!r} in the specs of {self.root}"
            raise KeyError(msg) from None

    def _errors(self, ref: str, instance: Any, *, request: bool) -> list[SpecFinding]:
        cls = REQUEST_VALIDATOR if request else RESPONSE_VALIDATOR
        validator = cls({"$ref": ref}, registry=self._registry, format_checker=FORMATS)
        errors = [SpecFinding(_json_path(e.absolute_path), e.message) for e in validator.iter_errors(instance)]
        return sorted(set(errors), key=lambda e: (e.path, e.message))

    def request_errors(self, operation_id: str, body: Any) -> list[SpecFinding]:
        """Return how ``body`` fails the request schema of ``operation_id`` (empty when it validates).

        A body sent to an operation without a body parameter is an error, and so is a missing body for
        one that has one.
        """
        op = self.operation(operation_id)
        if op.request_schema is None:
            return [] if body is None else [SpecFinding("$", f"{operation_id} takes no request body")]
        if body is None:
            return [SpecFinding("$", f"{operation_id} needs a JSON request body")]
        return self._errors(op.request_schema, body, request=True)

    def response_errors(self, operation_id: str, status: int, body: Any) -> list[SpecFinding]:
        """Return how a response of ``operation_id`` with ``status`` and ``body`` fails the spec."""
        op = self.operation(operation_id)
        key = str(status)
        if key not in op.responses:
            if 200 <= status < 300:  # noqa: PLR2004 - success statuses must be declared
                return [SpecFinding("$", f"{operation_id} declares no {status} response ({sorted(op.responses)})")]
            key = "default"
        ref = op.responses.get(key)
        if ref is None:
            return [] if body in (None, b"", "") else [SpecFinding("$", f"a {status} of {operation_id} has no body")]
        if body is None:
            return [SpecFinding("$", f"a {status} of {operation_id} needs a JSON body")]
        return self._errors(ref, body, request=False)

    def schema_errors(self, ref: str, instance: Any, *, request: bool = False) -> list[SpecFinding]:
        """Validate against a definition named relative to the specs folder (``path.json#/definitions/X``)."""
        relative, _, fragment = ref.partition("#")
        return self._errors(f"{self._documents.uri(relative)}#{fragment}", instance, request=request)

    def operation_status_errors(self, body: Any) -> list[SpecFinding]:
        """Validate an ``Azure-AsyncOperation`` status body (common-types ``OperationStatusResult``)."""
        return self.schema_errors(_OPERATION_STATUS, body)


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


@functools.lru_cache(maxsize=4)
def _load_cached(root: Path) -> ArmSpecs:
    return ArmSpecs(root)
