"""Point-in-time features with Polars: every value an example sees is computed from events strictly
before the example's timestamp.

The recipe is the same for every stateful op: aggregate the relevant events into a *state table*
keyed by (entity, timestamp) holding running totals, then attach to each example the last state
row strictly before its timestamp (``join_asof(..., allow_exact_matches=False)``). A trailing window
is the difference of two such lookups (at t and at t - window). Attributes come from the users and
items tables. The same functions build the training examples and the online lookup tables (the
state at the end of the data), so offline and online features cannot diverge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from recsys.data.encoders import Encoders
from recsys.schema import Feature, FeatureSchema, Scope

TS, USER, ITEM, TYPE = "timestamp", "user_id", "item_id", "event_type"
CATEGORY, SIGNUP, POSITION, REQUEST, EVENT_ID = "category", "signup_date", "position", "request_id", "event_id"
AVAILABLE = "available"
LABEL = "__label"
CAT = "__category"

# metadata columns every example table carries beside the encoded features
META_EVENT_ID, META_TS, META_USER, META_ITEM = "_event_id", "_timestamp", "_user", "_item"
META_COLUMNS = (META_EVENT_ID, META_TS, META_USER, META_ITEM)
META_AVAILABLE, META_CATEGORY = "_available", "_category"  # online item / user x category tables


def raw(feature: Feature) -> str:
    return f"__raw__{feature.name}"


def _strictly_before(examples: pl.LazyFrame, state: pl.LazyFrame, by: str | list[str],
                     on: str = TS) -> pl.LazyFrame:
    """Attach the last state row with ``state.on < examples.on`` (same ``by`` keys)."""
    return examples.join_asof(state, on=on, by=by, strategy="backward", allow_exact_matches=False,
                              check_sortedness=False)


@dataclass
class FeatureBuilder:
    """Computes raw feature values for example frames (user_id, item_id, timestamp[, position]).

    ``events`` must be validated and sorted by timestamp; ``users`` and ``items`` are the validated
    attribute tables.
    """

    schema: FeatureSchema
    events: pl.LazyFrame
    users: pl.DataFrame
    items: pl.DataFrame

    def __post_init__(self) -> None:
        self._item_category = (self.items[ITEM], self.items[CATEGORY])

    # ---- state tables --------------------------------------------------------------------------
    def _types(self, ops: tuple[str, ...], keys: tuple[str, ...] = ("event_types", "numerator", "denominator")
               ) -> list[str]:
        types: set[str] = set()
        for f in self.schema.features:
            if f.op in ops:
                for k in keys:
                    types.update(f.params.get(k, []))
        return sorted(types)

    def _counts(self, keys: list[str], types: list[str], prefix: str, last_seen: bool = False,
                events: pl.LazyFrame | None = None) -> pl.LazyFrame:
        """State table: running count of each event type per ``keys`` (and when each was last seen)."""
        events = self.events if events is None else events
        per_ts = (events.filter(pl.col(TYPE).is_in(types))
                  .group_by([*keys, TS])
                  .agg([(pl.col(TYPE) == t).sum().cast(pl.Int64).alias(f"__n_{t}") for t in types])
                  .sort([TS, *keys]))
        running = [pl.col(f"__n_{t}").cum_sum().over(keys).alias(f"{prefix}cum_{t}") for t in types]
        if last_seen:
            running += [pl.when(pl.col(f"__n_{t}") > 0).then(pl.col(TS)).forward_fill().over(keys)
                        .alias(f"{prefix}last_{t}") for t in types]
        return per_ts.with_columns(running).drop([f"__n_{t}" for t in types])

    def _history_state(self, f: Feature) -> pl.LazyFrame:
        length = f.length
        hist = (self.events.filter(pl.col(TYPE).is_in(f.params["event_types"]))
                .select(USER, TS, ITEM)
                .with_columns(pl.concat_list([pl.col(ITEM).shift(k).over(USER) for k in range(length)])
                              .alias(raw(f)))  # newest first
                .drop(ITEM))
        # several events at one instant: the last row holds them all
        return hist.unique(subset=[USER, TS], keep="last", maintain_order=True)

    def _category_of(self, item: pl.Expr) -> pl.Expr:
        ids, cats = self._item_category
        return item.replace_strict(ids, cats, default=None, return_dtype=pl.String)

    # ---- raw values ----------------------------------------------------------------------------
    def add_raw(self, examples: pl.LazyFrame, features: list[Feature]) -> pl.LazyFrame:
        """Add ``__raw__<name>`` for each feature; ``examples`` must be sorted by timestamp."""
        ex = examples
        wanted = {f.op for f in features}
        user_ops = ("user_event_count", "user_recency_hours", "user_category_share")
        if wanted & set(user_ops):
            user_types = self._types(user_ops)
            ex = _strictly_before(ex, self._counts([USER], user_types, "__u_", last_seen=True), USER)
        item_ops = ("item_event_count", "item_rate")
        if wanted & set(item_ops):
            item_types = self._types(item_ops)
            state = self._counts([ITEM], item_types, "__i_")
            ex = _strictly_before(ex, state, ITEM)
            for days in sorted({f.params["window_days"] for f in features
                                if f.op == "item_event_count" and f.params.get("window_days")}):
                shifted = f"__t_minus_{days}d"
                window_state = state.rename({TS: shifted, **{f"__i_cum_{t}": f"__i{days}_cum_{t}"
                                                             for t in item_types}})
                ex = _strictly_before(ex.with_columns((pl.col(TS) - timedelta(days=days)).alias(shifted)),
                                      window_state, ITEM, on=shifted).drop(shifted)
        for f in features:
            if f.op == "user_history":
                ex = _strictly_before(ex, self._history_state(f), USER)
        if "user_category_share" in wanted:
            if CAT not in ex.collect_schema():
                ex = ex.with_columns(self._category_of(pl.col(ITEM)).alias(CAT))
            for f in features:
                if f.op == "user_category_share":
                    ex = self._category_share(ex, f)
        return ex.with_columns([self._value(f, ex.collect_schema()).alias(raw(f))
                                for f in features if f.op not in ("user_history", "user_category_share")])

    def _category_share(self, ex: pl.LazyFrame, f: Feature) -> pl.LazyFrame:
        types = f.params["event_types"]
        with_cat = self.events.with_columns(self._category_of(pl.col(ITEM)).alias(CAT))
        state = self._counts([USER, CAT], types, f"__c{f.name}_", events=with_cat)
        ex = _strictly_before(ex, state, [USER, CAT])
        in_cat = pl.sum_horizontal([pl.col(f"__c{f.name}_cum_{t}") for t in types])
        total = pl.sum_horizontal([pl.col(f"__u_cum_{t}") for t in types])
        return ex.with_columns(pl.when(total > 0).then(in_cat.fill_null(0) / total).alias(raw(f)))

    def _value(self, f: Feature, columns: pl.Schema) -> pl.Expr:
        p = f.params
        if f.op == "id":
            return pl.col(p["column"])
        if f.op == "attribute":
            table = self.users if p["table"] == "users" else self.items
            key = USER if p["table"] == "users" else ITEM
            return pl.col(key).replace_strict(table[key], table[p["column"]], default=None,
                                              return_dtype=table.schema[p["column"]])
        if f.op == "user_tenure_days":
            signup = pl.col(USER).replace_strict(self.users[USER], self.users[SIGNUP], default=None,
                                                 return_dtype=pl.Date)
            return (pl.col(TS) - signup.cast(pl.Datetime("us", "UTC"))).dt.total_seconds() / 86400.0
        if f.op == "user_event_count":
            return pl.sum_horizontal([pl.col(f"__u_cum_{t}") for t in p["event_types"]]).fill_null(0)
        if f.op == "user_recency_hours":
            last = pl.max_horizontal([pl.col(f"__u_last_{t}") for t in p["event_types"]])
            return (pl.col(TS) - last).dt.total_seconds() / 3600.0
        if f.op == "item_event_count":
            now = pl.sum_horizontal([pl.col(f"__i_cum_{t}") for t in p["event_types"]]).fill_null(0)
            days = p.get("window_days")
            if not days:
                return now
            return now - pl.sum_horizontal([pl.col(f"__i{days}_cum_{t}") for t in p["event_types"]]).fill_null(0)
        if f.op == "item_rate":
            num = pl.sum_horizontal([pl.col(f"__i_cum_{t}") for t in p["numerator"]]).fill_null(0)
            den = pl.sum_horizontal([pl.col(f"__i_cum_{t}") for t in p["denominator"]]).fill_null(0)
            return (num + p["prior"] * p["prior_strength"]) / (den + p["prior_strength"])
        if f.op == "position":
            return pl.col(POSITION) if POSITION in columns else pl.lit(None, dtype=pl.Int32)
        if f.op == "clicked":
            return pl.col(LABEL)
        raise ValueError(f"feature {f.name!r}: no implementation for op {f.op!r}")


def encode(encoders: Encoders, features: list[Feature], meta: dict[str, pl.Expr]) -> list[pl.Expr]:
    """Select expressions: metadata columns, then each feature's model input under its own name."""
    return [*(e.alias(name) for name, e in meta.items()),
            *(encoders.expr(f, pl.col(raw(f))).alias(f.name) for f in features)]


def ranking_examples(events: pl.LazyFrame, schema: FeatureSchema) -> pl.LazyFrame:
    """One row per impression with its click label (a click with the same request_id and item)."""
    shown = schema.examples["ranking"]["event_type"]
    clicks = (events.filter((pl.col(TYPE) == "click") & pl.col(REQUEST).is_not_null())
              .select(REQUEST, ITEM).unique().with_columns(pl.lit(1.0).alias(LABEL)))
    return (events.filter(pl.col(TYPE) == shown)
            .select(EVENT_ID, TS, USER, ITEM, REQUEST, POSITION)
            .join(clicks, on=[REQUEST, ITEM], how="left")
            .with_columns(pl.col(LABEL).fill_null(0.0))
            .sort(TS, EVENT_ID))


def retrieval_examples(events: pl.LazyFrame, schema: FeatureSchema) -> pl.LazyFrame:
    """One positive (user, item) row per interaction of the configured types."""
    return (events.filter(pl.col(TYPE).is_in(schema.examples["retrieval"]["event_types"]))
            .select(EVENT_ID, TS, USER, ITEM)
            .sort(TS, EVENT_ID))


def task_features(schema: FeatureSchema, task: str) -> list[Feature]:
    """Columns of a task's examples: model inputs (and the label for ranking)."""
    if task == "ranking":
        label = schema.label("dlrm")
        return schema.used_by("dlrm") + ([label] if label else [])
    names = {f.name for part in ("two_tower.user", "two_tower.item") for f in schema.used_by(part)}
    return [f for f in schema.features if f.name in names]


def build_examples(builder: FeatureBuilder, encoders: Encoders, task: str) -> pl.LazyFrame:
    """Encoded examples of ``task`` (ranking | retrieval), sorted by time."""
    schema = builder.schema
    examples = ranking_examples(builder.events, schema) if task == "ranking" else \
        retrieval_examples(builder.events, schema)
    features = task_features(schema, task)
    with_raw = builder.add_raw(examples, features)
    meta = {META_EVENT_ID: pl.col(EVENT_ID), META_TS: pl.col(TS), META_USER: pl.col(USER),
            META_ITEM: pl.col(ITEM)}
    return with_raw.select(encode(encoders, features, meta)).sort(META_TS, META_EVENT_ID)


def online_tables(builder: FeatureBuilder, encoders: Encoders, as_of) -> dict[str, pl.LazyFrame]:
    """The state at ``as_of`` for serving: user features, item features, user x category features.

    Built by the same `FeatureBuilder` as the training examples, at one timestamp for everyone.
    """
    schema = builder.schema
    used = {f.name for part in ("two_tower.user", "two_tower.item", "dlrm") for f in schema.used_by(part)}
    user_f = [f for f in schema.by_scope(Scope.USER) if f.name in used]
    item_f = [f for f in schema.by_scope(Scope.ITEM) if f.name in used]
    cross_f = [f for f in schema.by_scope(Scope.CROSS) if f.name in used]
    at = pl.lit(as_of, dtype=pl.Datetime("us", "UTC")).alias(TS)
    users = builder.users.lazy().select(USER, at)
    items = builder.items.lazy().select(ITEM, at)
    tables = {
        "users": builder.add_raw(users, user_f).select(encode(encoders, user_f, {META_USER: pl.col(USER)})),
        "items": builder.add_raw(items, item_f).select(encode(
            encoders, item_f, {META_ITEM: pl.col(ITEM), META_AVAILABLE: pl.col(ITEM).replace_strict(
                builder.items[ITEM], builder.items[AVAILABLE], default=True)})),
    }
    if cross_f:
        types = sorted({t for f in cross_f for t in f.params["event_types"]})
        pairs = (builder.events.filter(pl.col(TYPE).is_in(types))
                 .select(USER, builder._category_of(pl.col(ITEM)).alias(CAT))
                 .unique().drop_nulls().with_columns(at).sort(USER, CAT))
        tables["user_category"] = builder.add_raw(pairs, cross_f).select(
            encode(encoders, cross_f, {META_USER: pl.col(USER), META_CATEGORY: pl.col(CAT)}))
    return tables

