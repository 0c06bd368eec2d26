"""Turn raw text rows into typed lake rows, quarantining every row that breaks a rule.

Every row read ends up in exactly one of two frames, `loaded` or `quarantined`, so the counts
reported to the UI always satisfy loaded + quarantined = read.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

Parser = Callable[[pl.Expr], pl.Expr]
QUARANTINE_SCHEMA = {
    "source_ref": pl.String,
    "reason": pl.String,
    "raw": pl.String,
}
REASON = "_reason"
RAW_PREFIX = "_raw_"


def as_text(raw: pl.Expr) -> pl.Expr:
    return raw


def as_int(raw: pl.Expr) -> pl.Expr:
    return raw.str.strip_chars().cast(pl.Int64, strict=False)


def as_float(raw: pl.Expr) -> pl.Expr:
    """A finite number; NaN and infinity are not amounts, prices or durations."""
    value = raw.str.strip_chars().cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value).otherwise(None)


def as_flag(raw: pl.Expr) -> pl.Expr:
    """0/1 (or false/true) as a boolean."""
    lowered = raw.str.strip_chars().str.to_lowercase()
    return (
        pl.when(lowered.is_in(["1", "true"]))
        .then(True)
        .when(lowered.is_in(["0", "false"]))
        .then(False)
        .otherwise(None)
    )


def as_timestamp(fmt: str) -> Parser:
    """Text in `fmt` as a UTC timestamp (microseconds)."""

    def parse(raw: pl.Expr) -> pl.Expr:
        return raw.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")

    return parse


def as_date(fmt: str = "%Y-%m-%d") -> Parser:
    def parse(raw: pl.Expr) -> pl.Expr:
        return raw.str.to_date(fmt, strict=False)

    return parse


@dataclass(frozen=True)
class Column:
    """A lake column: its name, how to parse it from raw text, and whether it is mandatory."""

    name: str
    parse: Parser = as_text
    required: bool = False
    source: str | None = None
    keep: bool = True

    @property
    def raw_name(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class Rule:
    """A business rule on typed rows: rows where `broken` is true are quarantined as `reason`."""

    reason: str
    broken: pl.Expr


@dataclass(frozen=True)
class Contract:
    """How one lake table is conformed."""

    columns: Sequence[Column]
    rules: Sequence[Rule] = ()
    unique_key: Sequence[str] = ()
    latest_by: str | None = None

    @property
    def raw_columns(self) -> list[str]:
        return [column.raw_name for column in self.columns]

    @property
    def loaded_names(self) -> list[str]:
        """The columns written to the lake table (some are only read to check a rule)."""
        return [column.name for column in self.columns if column.keep]


@dataclass(frozen=True)
class Conformed:
    """The outcome of conforming one batch of raw rows."""

    loaded: pl.DataFrame
    quarantined: pl.DataFrame
    extra_quarantined: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=QUARANTINE_SCHEMA)
    )

    @property
    def all_quarantined(self) -> pl.DataFrame:
        return pl.concat([self.extra_quarantined, self.quarantined])

    @property
    def rows_read(self) -> int:
        return self.loaded.height + self.all_quarantined.height

    def reason_counts(self) -> dict[str, int]:
        counts = self.all_quarantined.group_by("reason").len().sort("reason")
        return dict(zip(counts["reason"], counts["len"], strict=True))

    def summary(self) -> str:
        """`read N, loaded L, quarantined Q (reason: n, ...)` for the run log."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.reason_counts().items())
        text = (
            f"read {self.rows_read}, loaded {self.loaded.height}, "
            f"quarantined {self.all_quarantined.height}"
        )
        return f"{text} ({reasons})" if reasons else text

    def metadata(self) -> dict[str, dg.MetadataValue]:
        """Row accounting for the UI: every row read is loaded or quarantined."""
        return {
            "rows_read": dg.MetadataValue.int(self.rows_read),
            "rows_loaded": dg.MetadataValue.int(self.loaded.height),
            "rows_quarantined": dg.MetadataValue.int(self.all_quarantined.height),
            "quarantined_by_reason": dg.MetadataValue.json(self.reason_counts()),
        }


def conform(
    raw: pl.DataFrame,
    contract: Contract,
    source_ref: pl.Expr,
    quarantined_before: pl.DataFrame | None = None,
) -> Conformed:
    """Type `raw` (all text) by the contract and split it into loaded and quarantined rows.

    Reasons, first match wins: `missing_<column>`, `invalid_<column>` (wrong type), each rule's
    reason, then `duplicate` (a second row with the same key; the latest by `latest_by` stays).
    `quarantined_before` carries rows rejected earlier (for example malformed JSON lines).
    Quarantined rows keep their raw text exactly as read.
    """
    originals = raw.columns
    framed = (
        raw.lazy()
        .with_columns(_source_ref=source_ref, _order=pl.int_range(pl.len(), dtype=pl.Int64))
        .rename({name: RAW_PREFIX + name for name in originals})
    )
    typed = framed.with_columns(
        [
            column.parse(_normalised(column.raw_name)).alias(column.name)
            for column in contract.columns
        ]
    ).with_columns(_reasons(contract).alias(REASON))
    if contract.unique_key:
        typed = _mark_duplicates(typed, contract)
    typed = typed.collect()

    loaded = typed.filter(pl.col(REASON).is_null()).sort("_order").select(contract.loaded_names)
    quarantined = (
        typed.filter(pl.col(REASON).is_not_null())
        .sort("_order")
        .select(
            pl.col("_source_ref").alias("source_ref"),
            pl.col(REASON).alias("reason"),
            pl.struct([pl.col(RAW_PREFIX + name).alias(name) for name in originals])
            .struct.json_encode()
            .alias("raw"),
        )
    )
    if quarantined_before is None:
        return Conformed(loaded=loaded, quarantined=quarantined)
    return Conformed(loaded=loaded, quarantined=quarantined, extra_quarantined=quarantined_before)


def _normalised(raw_name: str) -> pl.Expr:
    """The raw text with surrounding blanks removed and an empty text read as missing."""
    text = pl.col(RAW_PREFIX + raw_name).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text)


def _reasons(contract: Contract) -> pl.Expr:
    """The first broken rule of each row, or null: type checks first, then business rules."""
    checks: list[tuple[pl.Expr, str]] = []
    for column in contract.columns:
        raw = _normalised(column.raw_name)
        if column.required:
            checks.append((raw.is_null(), f"missing_{column.name}"))
        checks.append((raw.is_not_null() & pl.col(column.name).is_null(), f"invalid_{column.name}"))
    checks += [(rule.broken.fill_null(False), rule.reason) for rule in contract.rules]

    chain = pl.when(checks[0][0]).then(pl.lit(checks[0][1]))
    for condition, reason in checks[1:]:
        chain = chain.when(condition).then(pl.lit(reason))
    return chain.otherwise(pl.lit(None, dtype=pl.String))


def _mark_duplicates(typed: pl.LazyFrame, contract: Contract) -> pl.LazyFrame:
    """Within each key, keep the latest row (then the first read) and mark the rest."""
    by = [contract.latest_by, "_order"] if contract.latest_by else ["_order"]
    descending = [True, False] if contract.latest_by else [False]
    valid = typed.filter(pl.col(REASON).is_null()).sort(by, descending=descending, nulls_last=True)
    valid = valid.with_columns(
        pl.when(pl.struct(contract.unique_key).is_first_distinct())
        .then(pl.col(REASON))
        .otherwise(pl.lit("duplicate"))
        .alias(REASON)
    )
    return pl.concat([valid, typed.filter(pl.col(REASON).is_not_null())])
