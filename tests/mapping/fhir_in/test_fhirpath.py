"""FHIRPath expressions are checked and compiled once; errors name the column."""

from __future__ import annotations

import pytest

from broker.mapping.fhir_in import FHIRPathSyntaxError, compile_path


class TestCompilePath:
    @pytest.mark.parametrize(
        ("text", "column", "reason"),
        [
            pytest.param("subject.exists() and", 21, "mismatched input '<EOF>'", id="incomplete"),
            pytest.param("subject reference", 9, "unexpected 'reference'", id="two-terms"),
            pytest.param("subject.foo()", 9, "foo() is not a FHIRPath function", id="function"),
            pytest.param("name.((", 6, "not valid FHIRPath", id="syntax"),
        ],
    )
    def test_errors_name_the_column(self, text: str, column: int, reason: str) -> None:
        """fhirpathpy would accept these silently or fail only at run time; compile refuses them."""
        with pytest.raises(FHIRPathSyntaxError) as caught:
            compile_path(text)
        assert caught.value.column == column
        assert reason in caught.value.reason

    def test_a_compiled_expression_evaluates_without_changing_the_resource(self) -> None:
        """The resource given is read, not annotated in place."""
        path = compile_path("participant.actor.where(reference.startsWith('Patient/'))")
        resource = {
            "resourceType": "Appointment",
            "participant": [
                {"actor": {"reference": "Practitioner/1"}},
                {"actor": {"reference": "Patient/2"}},
            ],
        }
        before = repr(resource)
        assert path(resource) == [{"reference": "Patient/2"}]
        assert repr(resource) == before
