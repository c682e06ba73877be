"""Request and response schemas of the HTTP API, and the error every client mistake becomes.

The request models are built from the model's inputs (:func:`request_models`) and used for the
OpenAPI document only: bodies are read and checked by :mod:`mmagent.serving.decoding`, which
names the exact field at fault.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from mmagent.agent.policies import Decision
from mmagent.specs import ModelSpec

MULTIPART = "multipart/form-data"


# -- errors ---------------------------------------------------------------------------------------
class ApiError(Exception):
    """A client error: status + message + the field (column, header or body part) at fault."""

    def __init__(self, status: int, error: str, field: str | None = None, record: int | None = None, problems: list[dict[str, Any]] | None = None) -> None:
        error, field = clean_text(error), clean_text(field) if field is not None else None
        problems = [{k: clean_text(v) if isinstance(v, str) else v for k, v in p.items()} for p in problems] if problems else problems
        super().__init__(error)
        self.status, self.error, self.field, self.record, self.problems = status, error, field, record, problems

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "field": self.field}
        if self.record is not None:
            out["record"] = self.record
        if self.problems:
            out["problems"] = self.problems
        return out


def type_name(value: Any) -> str:
    """How a JSON value's type reads in an error message."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null", int: "a number", float: "a number"}.get(
        type(value), "a number" if isinstance(value, BigInt) else type(value).__name__
    )


class BigInt:
    """A JSON integer too long to be a number here (kept as its digits, so the error can name
    the field instead of failing the whole body)."""

    def __init__(self, digits: str) -> None:
        self.digits = digits


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (valid in JSON escapes, not in UTF-8) written as ``\\udXXX``,
    so an error message that quotes a client's bad key can still be encoded and logged."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong")
    field: Optional[str] = Field(None, description="the column, header or body part at fault")
    record: Optional[int] = Field(None, description="index of the record (in `records`) at fault")
    problems: Optional[list[dict[str, Any]]] = Field(None, description="every problem, when there are several")


# -- response models ------------------------------------------------------------------------------
class TargetPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Optional[str] = Field(None, description="classification: the most probable label")
    labels: Optional[list[str]] = Field(None, description="multilabel: labels with probability >= 0.5")
    probabilities: Optional[dict[str, float]] = Field(None, description="calibrated probability per label")
    value: Optional[float] = Field(None, description="regression: the predicted value")
    unknown: Optional[bool] = Field(None, description="the agent's target: the input is unlike what the model was trained on")
    unknown_score: Optional[float] = Field(None, description="the agent's target: the unknown-input score (higher: less like the training data)")
    prediction_set: Optional[list[str]] = Field(None, description="the agent's target: the labels of the conformal prediction set at the run's error level")


class PredictResponse(BaseModel):
    predictions: list[dict[str, TargetPrediction]] = Field(description="one entry per record, in order: target -> prediction")
    model_version: Optional[str] = Field(None, description="the model version that answered (all records of a request are answered by one)")


class ActResponse(BaseModel):
    decisions: list[Decision] = Field(description="one decision per record, in order")
    model_version: Optional[str] = Field(None, description="the model version that answered (all records of a request are answered by one)")


class ExplainResponse(BaseModel):
    decision: Decision = Field(description="what /v1/act returns for this record")
    target: str = Field(description="the target explained")
    explained_label: Optional[str] = Field(None, description="the label whose calibrated probability is attributed (the predicted one)")
    contributions: dict[str, float] = Field(description="per-input contributions, as /v1/act reports them")
    inputs: dict[str, dict[str, Any]] = Field(
        description="per input present: text `tokens` (word, start, end, signed score), image `heatmap` (rows x cols in [0, 1]) + `overlay_png`, "
        "audio `scores` per `window_seconds` + `transcript`, numeric `features`, categorical `score`; `method` names the attribution"
    )
    model_version: Optional[str] = Field(None, description="the model version that answered")


class InputInfo(BaseModel):
    name: str
    columns: list[str]
    modality: Literal["text", "image", "audio", "numeric", "categorical"]
    required: bool
    encoding: str = Field(description="how to send it in JSON")


class TargetInfo(BaseModel):
    name: str
    type: str
    labels: list[str]


class SchemaResponse(BaseModel):
    inputs: list[InputInfo]
    targets: list[TargetInfo]
    agent_target: Optional[str] = None
    policy: Optional[str] = None
    model_version: Optional[str] = Field(None, description="the model version in service")
    limits: dict[str, int | float]
    batching: dict[str, int | float]
    runtime: Optional[dict[str, int | str]] = None  # backend and thread plan (serving/threads.py)


class Health(BaseModel):
    status: str


ERRORS = {
    400: {"model": ErrorResponse, "description": "malformed body (not JSON, empty, neither `record` nor `records`)"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "body larger than max_body_bytes"},
    415: {"model": ErrorResponse, "description": "content type is not application/json or multipart/form-data"},
    422: {"model": ErrorResponse, "description": "a bad value (unknown column, wrong type, bad base64, undecodable or oversized media)"},
    503: {"model": ErrorResponse, "description": "model not loaded yet, or overloaded"},
}


# -- OpenAPI request schemas -----------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name)


def record_model(spec: ModelSpec) -> type[BaseModel]:
    """A pydantic model of one JSON record for this model's inputs (for the docs)."""
    fields: dict[str, Any] = {}
    for inp in spec.inputs:
        for col in inp.columns:
            if inp.modality == "text":
                typ, desc, extra = Optional[str], "text", {}
            elif inp.modality == "numeric":
                typ, desc, extra = Optional[float], "a number", {}
            elif inp.modality == "categorical":
                typ, desc, extra = Optional[Union[str, float]], "one category (a string or a number)", {}
            else:
                typ, desc, extra = Optional[str], f"the {inp.modality} file's bytes, base64-encoded", {"json_schema_extra": {"contentEncoding": "base64"}}
            req = " (required)" if inp.required else " (optional: a missing input is allowed)"
            fields[f"f_{_safe(col)}_{len(fields)}"] = (typ, Field(None, alias=col, description=f"{inp.modality} input {inp.key!r}: {desc}{req}", **extra))
    return create_model("Record", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)


def request_models(spec: ModelSpec, max_records: int) -> tuple[type[BaseModel], dict[str, Any]]:
    """The JSON body model and the multipart form schema of /v1/predict and /v1/act."""
    record = record_model(spec)
    body = create_model(
        "RecordsRequest",
        __config__=ConfigDict(extra="forbid"),
        record=(Optional[record], Field(None, description="one record")),
        records=(Optional[list[record]], Field(None, description=f"several records (at most {max_records})", max_length=max_records)),
    )
    multipart: dict[str, Any] = {"type": "object", "properties": {}}
    for inp in spec.inputs:
        for col in inp.columns:
            if inp.modality in ("image", "audio"):
                multipart["properties"][col] = {"type": "string", "format": "binary", "description": f"{inp.modality} file upload"}
            else:
                multipart["properties"][col] = {"type": "string", "description": f"{inp.modality} value"}
    return body, multipart


def openapi_body(body: type[BaseModel], multipart: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route that takes records as JSON or multipart."""
    schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}, MULTIPART: {"schema": multipart}}}}


def explain_body(spec: ModelSpec, max_records: int) -> dict[str, Any]:
    """``openapi_extra`` of /v1/explain: the /v1/act body, for one record."""
    extra = openapi_body(*request_models(spec, max_records))
    schema = extra["requestBody"]["content"]["application/json"]["schema"]
    schema["description"] = 'one record: {"record": {...}} (or "records" holding exactly one)'
    return extra
