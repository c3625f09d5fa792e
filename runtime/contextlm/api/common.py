"""Shared building blocks of the contextlm resource API.

The pydantic models in this package are the single source of truth for the CRDs:
`contextlm crds` turns their JSON Schema into structural OpenAPI schemas. Cross-field
checks are declared once as `Rule`s and enforced twice from that one declaration: by a
pydantic validator here and by a CEL rule (`x-kubernetes-validations`) in the CRD, so
`contextlm validate` and `kubectl apply` refuse the same manifests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

GROUP = "contextlm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Child objects are named `<resource>-<component>` and Services must be DNS-1035 labels
# of at most 63 characters; 40 leaves room for the longest component suffix.
MAX_NAME_LENGTH = 40
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Five-field cron or a predefined macro, as CronJob accepts them.
CRON = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"


def _valid_cron(value: str) -> str:
    """The CRD pattern checks the shape; this checks each field (`61 * * * *` fails)."""
    from croniter import croniter

    if not croniter.is_valid(value):
        raise PydanticCustomError(
            "cron", "'{value}' is not a cron schedule (minute hour day month weekday)",
            {"value": value},
        )  # fmt: skip
    return value


# A cron schedule, checked field by field (UTC), as CronJob and the trigger read it.
CronSchedule = Annotated[str, AfterValidator(_valid_cron)]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, stated once for pydantic and once as CEL.

    `check` is the Python reading of `cel`; a unit test evaluates both on every
    example and every bad case so the two cannot drift apart. `field` is the
    sub-path the rule is about, appended to the error location so the message names
    the field (it becomes the CEL `fieldPath`). `cel=None` marks a rule the schema
    already enforces structurally (list-map keys), checked here for `contextlm
    validate` only.
    """

    cel: str | None
    message: str
    check: Callable[[Any], bool]
    field: str = ""

    def to_validation(self) -> dict[str, str]:
        assert self.cel is not None
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


def unique(items: str, key: str) -> Rule:
    """Items of a list-map must differ in `key`; the API server enforces the list-map."""
    return Rule(
        cel=None,
        message=f"{items} must have unique {key}s",
        field=items,
        check=lambda s: len({getattr(i, key) for i in getattr(s, items)}) == len(getattr(s, items)),
    )


def immutable(what: str) -> dict[str, Any]:
    """JSON-schema extra making a field immutable once set (a CEL transition rule)."""
    return {
        "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": f"{what} is immutable once set"}
        ]
    }


class Model(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Model:
        for rule in type(self).rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "contextlm_rule", "{message}", {"message": rule.message, "field": rule.field}
                )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            cel = [r.to_validation() for r in cls.rules if r.cel is not None]
            if cel:
                target["x-kubernetes-validations"] = cel
        return schema


Name = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
Quantity = Annotated[
    int | Annotated[str, Field(max_length=64, pattern=QUANTITY)],
    Field(description="A Kubernetes quantity, such as 500m, 2, 4Gi."),
]


def _rfc3339(value: str) -> str:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("must be an RFC 3339 time with a zone, e.g. 2026-01-31T12:00:00Z")
    return value


Timestamp = Annotated[
    str,
    AfterValidator(_rfc3339),
    Field(max_length=64, json_schema_extra={"format": "date-time"}),
]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


StringMap = Annotated[
    dict[
        Annotated[str, Field(max_length=317)],
        Annotated[str, Field(max_length=1024)],
    ],
    Field(default_factory=dict, max_length=64),
]


class LocalObjectReference(Model):
    """A reference to an object of a known kind in the same namespace."""

    name: Name = Field(description="Name of the referenced object in the same namespace.")


class SecretKeySelector(Model):
    """One key of a Secret in the same namespace."""

    name: Name = Field(description="Name of the Secret in the same namespace.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret.",
    )


class ResourceRequirements(Model):
    """Compute resources of a container, as in a Pod spec."""

    requests: dict[Annotated[str, Field(max_length=128)], Quantity] = Field(
        default_factory=dict, max_length=16, description="Minimum resources, e.g. cpu: 500m."
    )
    limits: dict[Annotated[str, Field(max_length=128)], Quantity] = Field(
        default_factory=dict, max_length=16, description="Maximum resources, e.g. memory: 4Gi."
    )


class Toleration(Model):
    """A Pod toleration, so work can land on tainted (for example GPU) nodes."""

    key: str | None = Field(default=None, max_length=317, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value; Equal matches `value`."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400 * 7,
        description="How long a NoExecute taint is tolerated before eviction.",
    )


class Placement(Model):
    """Where pods of a component may run."""

    node_selector: StringMap = Field(
        description="Labels a node must carry, e.g. nvidia.com/gpu.product.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Taints the pods tolerate."
    )


class Autoscaling(Model):
    """Horizontal autoscaling; when set, the autoscaler owns the replica count."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            field="minReplicas",
            check=lambda s: s.min_replicas <= s.max_replicas,
        ),
    )

    min_replicas: int = Field(default=1, ge=1, le=100, description="Fewest replicas.")
    max_replicas: int = Field(default=4, ge=1, le=100, description="Most replicas.")
    target_cpu_utilization: int = Field(
        default=75, ge=1, le=100, description="Average CPU utilisation to aim for, in percent."
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """One observation of an object's state, shaped as `metav1.Condition`."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type in CamelCase, e.g. Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Programmatic CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable detail of the transition."
    )
    last_transition_time: Timestamp = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was set for."
    )


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description="Latest observations of the object's state, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class StatusBase(Model):
    """What every status carries; written only by the operator."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = conditions_field()
    phase: str | None = Field(
        default=None, max_length=32, description="One-word summary for kubectl get columns."
    )


class ScaledStatus(StatusBase):
    """Status of a resource with a scale subresource (an autoscaler may own replicas)."""

    replicas: int | None = Field(
        default=None, ge=0, description="Ready replicas of the component this resource scales."
    )
    selector: str | None = Field(
        default=None,
        max_length=1024,
        description="Label selector of the scaled pods, for the scale subresource.",
    )


class ObjectMeta(BaseModel):
    """The part of `metav1.ObjectMeta` the API checks; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL,
        description="Object name; a DNS label of at most 40 characters.",
    )
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
