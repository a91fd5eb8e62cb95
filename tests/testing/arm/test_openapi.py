"""The spec validator: the official examples pass, malformed bodies fail with the JSON path named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from aml_identity.testing.arm import ArmSpecs, SpecsNotFoundError, find_specs_dir

CREATE = {
    "location": "eastus",
    "identity": {"type": "SystemAssigned"},
    "properties": {
        "computeType": "AmlCompute",
        "properties": {
            "vmSize": "STANDARD_DS3_V2",
            "vmPriority": "Dedicated",
            "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 4, "nodeIdleTimeBeforeScaleDown": "PT30M"},
        },
    },
}
WORKSPACE = "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"
DATASTORE = {
    "id": f"{WORKSPACE}/datastores/d",
    "name": "d",
    "type": "Microsoft.MachineLearningServices/workspaces/datastores",
    "properties": {
        "datastoreType": "AzureBlob",
        "accountName": "acct",
        "containerName": "data",
        "endpoint": "core.windows.net",
        "protocol": "https",
        "credentials": {"credentialsType": "None"},
        "isDefault": False,
        "description": None,
    },
}


@pytest.fixture(scope="module")
def specs() -> ArmSpecs:
    return ArmSpecs.load()


def _create(**changes: object) -> dict:
    body = copy.deepcopy(CREATE)
    aml = body["properties"]["properties"]
    aml.update(changes)
    return body


class TestOfficialExamples:
    def test_every_saved_example_validates(self, specs):
        """The x-ms-examples saved beside the specs pass as requests and as responses."""
        examples = specs.examples()
        names = {example.path.name for example in examples}
        assert {"BasicAmlCompute.json", "AmlCompute.json", "patch.json", "delete.json"} <= names
        for example in examples:
            if specs.operation(example.operation_id).request_schema is not None:
                assert specs.request_errors(example.operation_id, example.request_body) == [], example.path
            for status, body in example.responses.items():
                assert specs.response_errors(example.operation_id, int(status), body) == [], (
                    example.path,
                    status,
                )

    def test_the_get_example_is_polymorphic_amlcompute(self, specs):
        """The GET example's AmlCompute properties are checked (a bad one inside them is found)."""
        example = next(e for e in specs.examples() if e.path.name == "AmlCompute.json")
        body = copy.deepcopy(example.responses["200"])
        body["properties"]["properties"]["currentNodeCount"] = "zero"
        errors = specs.response_errors("Compute_Get", 200, body)
        assert [e.path for e in errors] == ["$.properties.properties.currentNodeCount"]


class TestRejections:
    def test_missing_required_names_the_path(self, specs):
        body = _create(scaleSettings={"minNodeCount": 0})
        errors = specs.request_errors("Compute_CreateOrUpdate", body)
        assert len(errors) == 1
        assert errors[0].path == "$.properties.properties.scaleSettings"
        assert "'maxNodeCount' is a required property" in errors[0].message

    def test_unknown_discriminator_lists_the_known_ones(self, specs):
        body = copy.deepcopy(CREATE)
        body["properties"]["computeType"] = "Quantum"
        (error,) = specs.request_errors("Compute_CreateOrUpdate", body)
        assert error.path == "$.properties.computeType"
        assert "'AmlCompute'" in error.message
        assert "'Quantum' is not a known computeType" in error.message

    def test_extensible_enums_compare_case_insensitively(self, specs):
        assert specs.request_errors("Compute_CreateOrUpdate", _create(vmPriority="lowpriority")) == []
        body = _create()
        body["identity"] = {"type": "userassigned", "userAssignedIdentities": {"/subscriptions/s/x": {}}}
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []
        (error,) = specs.request_errors("Compute_CreateOrUpdate", _create(vmPriority="Spot"))
        assert error.path == "$.properties.properties.vmPriority"

    def test_formats_are_checked(self, specs):
        body = _create(scaleSettings={"maxNodeCount": 2**40, "nodeIdleTimeBeforeScaleDown": "30 minutes"})
        errors = {e.path: e.message for e in specs.request_errors("Compute_CreateOrUpdate", body)}
        assert "int32" in errors["$.properties.properties.scaleSettings.maxNodeCount"]
        assert "duration" in errors["$.properties.properties.scaleSettings.nodeIdleTimeBeforeScaleDown"]

    def test_identity_type_is_required(self, specs):
        body = _create()
        body["identity"] = {"userAssignedIdentities": {}}
        (error,) = specs.request_errors("Compute_CreateOrUpdate", body)
        assert error.path == "$.identity"

    def test_wrong_types_in_the_patch_body(self, specs):
        body = {"properties": {"properties": {"scaleSettings": {"maxNodeCount": "four"}}}}
        (error,) = specs.request_errors("Compute_Update", body)
        assert error.path == "$.properties.properties.scaleSettings.maxNodeCount"

    def test_a_body_is_required_where_the_spec_has_one(self, specs):
        assert specs.request_errors("Compute_CreateOrUpdate", None)[0].path == "$"
        assert specs.request_errors("Compute_Get", {"unexpected": True})[0].path == "$"


class TestSwaggerSemantics:
    def test_read_only_fields_are_tolerated_in_requests(self, specs):
        """A client may PUT back what it read, read-only fields included."""
        body = _create(allocationState="Steady", currentNodeCount=0)
        body["id"] = "/subscriptions/s/resourceGroups/r/providers/x/computes/c"
        body["properties"]["provisioningState"] = "Succeeded"
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []

    def test_x_nullable_accepts_null(self, specs):
        body = _create(subnet=None, userAccountCredentials=None)
        body["tags"] = None
        assert specs.request_errors("Compute_CreateOrUpdate", body) == []
        body = _create(scaleSettings=None)  # not x-nullable
        assert specs.request_errors("Compute_CreateOrUpdate", body)[0].path == "$.properties.properties.scaleSettings"

    def test_inherited_model_is_closed_over_all_its_parts(self, specs):
        """additionalProperties: false on an allOf model allows the inherited properties, nothing else."""
        assert specs.response_errors("Datastores_Get", 200, DATASTORE) == []
        body = copy.deepcopy(DATASTORE)
        body["properties"]["accountKey"] = "not here"
        body["properties"]["credentials"]["secret"] = "nor here"
        errors = specs.response_errors("Datastores_Get", 200, body)
        assert [e.path for e in errors] == ["$.properties.accountKey", "$.properties.credentials.secret"]

    def test_undeclared_success_status_is_an_error(self, specs):
        errors = specs.response_errors("Compute_Get", 201, {"id": "x"})
        assert errors
        assert "declares no 201" in errors[0].message

    def test_error_responses_use_the_default_schema(self, specs):
        assert specs.response_errors("Compute_Get", 404, {"error": {"code": "NotFound", "message": "m"}}) == []
        assert specs.response_errors("Compute_Get", 404, {"error": {"code": 404}})[0].path == "$.error.code"

    def test_operation_status_body(self, specs):
        assert specs.operation_status_errors({"status": "InProgress", "startTime": "2026-01-01T00:00:00Z"}) == []
        assert specs.operation_status_errors({"startTime": "yesterday"})


class TestFindingTheSpecs:
    def test_explicit_folder_without_specs_is_a_clear_error(self, tmp_path):
        with pytest.raises(SpecsNotFoundError) as raised:
            find_specs_dir(tmp_path)
        assert str(tmp_path) in str(raised.value)
        assert "AML_IDENTITY_SPECS_DIR" in str(raised.value)

    def test_environment_variable_is_used(self, tmp_path):
        real = find_specs_dir()
        assert find_specs_dir(environ={"AML_IDENTITY_SPECS_DIR": str(real)}) == real
        with pytest.raises(SpecsNotFoundError, match="AML_IDENTITY_SPECS_DIR"):
            find_specs_dir(environ={"AML_IDENTITY_SPECS_DIR": str(tmp_path)})

    def test_default_is_shared_specs_above_the_checkout(self):
        found = find_specs_dir(environ={})
        assert found.parts[-2:] == ("shared", "specs")
        assert (found / "specification").is_dir()
        assert Path(__file__).resolve().is_relative_to(found.parent.parent)
