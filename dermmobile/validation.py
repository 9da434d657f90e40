"""Strict schemas for what dermmobile reads: field types with their meaning, and readable refusals.

The manifest (artifact.py), the checkpoint metadata (checkpoint.py) and the bench row
(bench/rows.py) are pydantic models built from the types here. Every scalar is strict
(a string is never read as a number, a bool never as an int), objects refuse unknown
keys, numbers must be finite, and each field has the range its meaning allows: an image
side of 0 or 10^6 pixels, a label that is not a string, a std of 0 are refused on load
with a message naming the field, instead of failing later as a traceback or a 7 TiB
allocation.

The preprocessing spec checks its own fields (`PreprocessSpec.__post_init__`/`from_dict`);
the manifest and checkpoint models call it, so files and command line share that rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from dermmobile.errors import BadInputError

if TYPE_CHECKING:
    from dermmobile.preprocess import PreprocessSpec

# Objects refuse unknown keys; floats must be finite (1e400 and NaN are not numbers we use).
SCHEMA_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)

MAX_IMAGE_SIDE = 4096  # pixels of a resize or crop side: far above any mobile input (224-600)
MAX_LABELS = 10_000
MAX_LABEL_CHARS = 200
MAX_NAME_CHARS = 255

Label = Annotated[StrictStr, Field(min_length=1, max_length=MAX_LABEL_CHARS)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
ShortText = Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS)]
ImageSide = Annotated[StrictInt, Field(ge=1, le=MAX_IMAGE_SIDE)]
Count = Annotated[StrictInt, Field(ge=0)]
Positive = Annotated[StrictInt, Field(ge=1)]
Number = StrictFloat  # accepts JSON integers too; finiteness comes from SCHEMA_CONFIG
NonNegative = Annotated[StrictFloat, Field(ge=0)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^([0-9a-f]{64})?$")]  # "" until filled in
Flag = StrictBool


def labels_problem(labels: list[str]) -> str | None:
    """Why a label list is unusable (fewer than 2, duplicates), or None."""
    if len(labels) < 2:
        return f"needs at least 2 class labels, got {len(labels)}"
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        return f"labels must be distinct; repeated: {', '.join(repr(t) for t in twice[:5])}"
    return None


def checked_labels_and_spec(labels: list[str], preprocess: dict) -> PreprocessSpec:
    """What a checkpoint's and an artifact's metadata must both hold: usable labels and a preprocessing spec that
    reads (PreprocessSpec refuses bad types and ranges itself). Returns the spec; raises ValueError, as a pydantic
    validator must."""
    from dermmobile.preprocess import PreprocessSpec

    problem = labels_problem(labels)
    if problem:
        raise ValueError(problem)
    try:
        return PreprocessSpec.from_dict(preprocess)
    except BadInputError as exc:
        raise ValueError(f"preprocess: {exc}") from None


Labels = Annotated[list[Label], Field(min_length=2, max_length=MAX_LABELS)]


def describe(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one line: where, what was wrong, what was given."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        given = error.get("input")
        shown = repr(given) if isinstance(given, str | int | float | bool) or given is None else type(given).__name__
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message} (got {shown[:80]})" if error["type"] != "missing" else f"{where}: missing")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate(schema: Any, data: Any, where: str):
    """Validate `data` against a pydantic model, dataclass or type; BadInputError naming `where` and the fields."""
    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(data)
        return _adapter(schema).validate_python(data)
    except ValidationError as exc:
        raise BadInputError(f"{where}: {describe(exc)}") from None


_ADAPTERS: dict = {}


def _adapter(schema) -> TypeAdapter:
    if schema not in _ADAPTERS:
        _ADAPTERS[schema] = TypeAdapter(schema)
    return _ADAPTERS[schema]
