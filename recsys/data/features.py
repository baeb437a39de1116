"""Point-in-time features with Polars: every value an example sees is computed from events strictly
before the example's timestamp.

The recipe is the same for every stateful op: turn the relevant events into a *state table* keyed by
(entity, timestamp) holding running totals (one stable sort by entity, then linear scans), and attach
to each example the last state row strictly before its timestamp (``join_asof(...,
allow_exact_matches=False)``). A trailing window is the difference of two such lookups (at t and at
t - window). Attributes come from the users and items tables, encoded once per table row rather than
once per example; histories are encoded in their state table for the same reason.

The same `FeatureBuilder` builds the training examples and the online lookup tables (the state after
the last event), so offline and online features cannot diverge. State tables are built once per
builder and shared by both tasks and the online tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from recsys.data.encoders import Encoders
from recsys.data.state_spec import (
    ITEM_COUNTS,
    SIGNUP_COLUMN,
    THEN,
    USER_COUNTS,
    StateSpec,
    category_prefix,
    count_column,
    last_column,
    window_days,
    window_prefix,
)
from recsys.ids import code_expr
from recsys.schema import Feature, FeatureSchema, Kind, Scope

TS, USER, ITEM, TYPE = "timestamp", "user_id", "item_id", "event_type"
CATEGORY, SIGNUP, POSITION, REQUEST, EVENT_ID = "category", "signup_date", "position", "request_id", "event_id"
AVAILABLE = "available"
LABEL = "__label"
CAT = "__category"  # an integer code per category name

# metadata columns every example table carries beside the encoded features
META_EVENT_ID, META_TS, META_USER, META_ITEM = "_event_id", "_timestamp", "_user", "_item"
META_COLUMNS = (META_EVENT_ID, META_TS, META_USER, META_ITEM)
META_REQUEST = "_request"  # ranking examples: the request whose list showed the impression
META_AVAILABLE, META_CATEGORY = "_available", "_category"  # online item / user x category tables
META_SIGNUP = "_signup"  # online users table: the signup time (live features compute the tenure as of now)

F = "f:"  # prefix of computed features inside a frame (feature and event column names may coincide)

USER_COUNT_OPS = ("user_event_count", "user_recency_hours", "user_category_share")
ITEM_COUNT_OPS = ("item_event_count", "item_rate")


def _strictly_before(examples: pl.LazyFrame, state: pl.LazyFrame, by: str | list[str],
                     on: str = TS) -> pl.LazyFrame:
    """Attach the last state row with ``state.on < examples.on`` (same ``by`` keys).

    Both sides are sorted by ``on`` within each ``by`` group (examples by time, states by key then time).
    Of several state rows at one instant the last is taken: it holds them all.
    """
    return examples.join_asof(state, on=on, by=by, strategy="backward", allow_exact_matches=False,
                              check_sortedness=False)


def _runs(keys: list[str]) -> tuple[pl.Expr, pl.Expr]:
    """On rows sorted by ``keys`` then time: (first row of a key, last row of a (key, time) run)."""
    first = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
    last = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(-1)) for k in [*keys, TS]])
    return first, last


@dataclass
class FeatureBuilder:
    """Computes encoded features for example frames (user_id, item_id, timestamp[, position][, label]).

    Args:
        events: validated events sorted by (timestamp, event_id).
        users, items: the validated attribute tables.
        encoders: fitted for this schema (`recsys.data.encoders.fit_encoders`).
    """

    schema: FeatureSchema
    events: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    encoders: Encoders
    _states: dict[str, pl.DataFrame] = field(default_factory=dict, init=False, repr=False)

    # ---- state tables (built once, shared) ------------------------------------------------------
    def _state(self, name: str, make: Callable[[], pl.LazyFrame]) -> pl.DataFrame:
        if name not in self._states:
            self._states[name] = make().collect()
        return self._states[name]

    def _counts(self, keys: list[str], counters: set[tuple[str, ...]], prefix: str,
                last_seen: set[tuple[str, ...]] = frozenset(), events: pl.LazyFrame | None = None) -> pl.LazyFrame:
        """Per ``keys`` after each instant: how many events of each type set so far (``counters``), and
        when one of each type set in ``last_seen`` last happened. One column per type set, nothing more."""
        events = self.events.lazy() if events is None else events
        first, last = _runs(keys)
        cols = []
        for types in sorted(counters):
            flag = pl.col(TYPE).is_in(types).cast(pl.Int64)
            # a segmented running sum: the global running sum minus its value where the key started
            cols.append((flag.cum_sum() - pl.when(first).then(flag.cum_sum() - flag).forward_fill())
                        .alias(prefix + count_column(types)))
        never = pl.lit(datetime(1970, 1, 1, tzinfo=UTC), dtype=pl.Datetime("us", "UTC"))
        for types in sorted(last_seen):
            seen = pl.when(pl.col(TYPE).is_in(types)).then(pl.col(TS)).when(first).then(never).forward_fill()
            cols.append(pl.when(seen == never).then(None).otherwise(seen).alias(prefix + last_column(types)))
        all_types = sorted({t for types in counters | last_seen for t in types})
        return (events.filter(pl.col(TYPE).is_in(all_types)).select(*keys, TS, TYPE)
                .sort(keys, maintain_order=True)  # stable: time order within each key
                .with_columns(cols).filter(last).drop(TYPE))

    @property
    def spec(self) -> StateSpec:
        return StateSpec.of(self.schema)

    def _user_counts(self) -> pl.LazyFrame:
        spec = self.spec
        return self._state("user_counts", lambda: self._counts(
            [USER], set(spec.user_counters), USER_COUNTS, last_seen=set(spec.user_last_seen))).lazy()

    def _item_counts(self) -> pl.LazyFrame | None:
        if not (counters := self.spec.item_counters):
            return None
        return self._state("item_counts", lambda: self._counts([ITEM], set(counters), ITEM_COUNTS)).lazy()

    def _item_window_counts(self, days: int) -> pl.LazyFrame:
        """Counters of the ``days``-window features only: built from just their event types (small)."""
        counters = set(self.spec.windows[days])
        return self._state(f"item_window:{days}", lambda: self._counts([ITEM], counters, window_prefix(days))).lazy()

    def _history(self, f: Feature) -> pl.LazyFrame:
        """The user's last ``length`` items after each instant, newest first, as embedding indices: of the items
        themselves, or of an item attribute (the feature whose table the history shares, e.g. each item's category)."""
        def make() -> pl.LazyFrame:
            _, last = _runs([USER])
            table = self.schema[f.embedding_table]
            if table.kind == Kind.ITEM_ID:
                index = self.encoders.index(table.name, pl.col(ITEM))
            else:  # the attribute as its own feature encodes it; an item outside the items table: 0 (unknown)
                index = self._lookup("items", F + table.name).fill_null(0)
            same_user = [pl.col(USER).shift(k) == pl.col(USER) for k in range(f.length)]
            items = [pl.when(same_user[k]).then(pl.col("__index").shift(k)).otherwise(0) for k in range(f.length)]
            return (self.events.lazy().filter(pl.col(TYPE).is_in(f.params["event_types"]))
                    .select(USER, TS, index.alias("__index"))
                    .sort(USER, maintain_order=True)
                    .with_columns(pl.concat_arr(items).alias(F + f.name))
                    .filter(last).select(USER, TS, F + f.name))
        return self._state(f"history:{f.name}", make).lazy()

    def _category_counts(self, f: Feature) -> pl.LazyFrame:
        with_cat = self.events.lazy().with_columns(self._category_of(pl.col(ITEM)).alias(CAT))
        return self._state(f"category:{f.name}", lambda: self._counts(
            [USER, CAT], {tuple(sorted(f.params["event_types"]))}, category_prefix(f), events=with_cat)).lazy()

    def _categories(self) -> pl.DataFrame:
        """Item -> an integer code of its category (joins on ints are cheaper than on names)."""
        return self._state("categories", lambda: self.items.lazy().select(
            ITEM, CATEGORY, pl.col(CATEGORY).rank("dense").cast(pl.Int64).alias(CAT)))

    def _category_of(self, item: pl.Expr) -> pl.Expr:
        rows = self._categories()
        return item.replace_strict(rows[ITEM], rows[CAT], default=None, return_dtype=pl.Int64)

    def _category_name(self, code: pl.Expr) -> pl.Expr:
        rows = self._categories().unique(CAT)
        return code.replace_strict(rows[CAT], rows[CATEGORY], default=None, return_dtype=pl.String)

    def _table(self, table: str) -> pl.DataFrame:
        """Every per-row feature of the users / items table, encoded once per row."""
        def make() -> pl.LazyFrame:
            cols = [self.encoders.expr(f, pl.col(f.params["column"])).alias(F + f.name) for f in self.schema.features
                    if per_row_table(f) == table]
            if table == "users":
                cols.append(pl.col(SIGNUP).cast(pl.Datetime("us", "UTC")).alias(SIGNUP_COLUMN))
            frame = self.users if table == "users" else self.items
            return frame.lazy().select(USER if table == "users" else ITEM, *cols)
        return self._state(f"table:{table}", make)

    def _lookup(self, table: str, column: str) -> pl.Expr:
        """``column`` of the table row of each example's user / item (null if it is not in the table)."""
        rows, key = self._table(table), USER if table == "users" else ITEM
        return pl.col(key).replace_strict(rows[key], rows[column], default=None, return_dtype=rows.schema[column])

    # ---- features for examples --------------------------------------------------------------------
    def add(self, examples: pl.LazyFrame, features: list[Feature]) -> pl.LazyFrame:
        """Add each feature's model input as column ``f:<name>`` to ``examples`` (sorted by time)."""
        ex = examples
        ops = {f.op for f in features}
        if ops & set(USER_COUNT_OPS):
            ex = _strictly_before(ex, self._user_counts(), USER)
        if ops & set(ITEM_COUNT_OPS) and (item_state := self._item_counts()) is not None:
            ex = _strictly_before(ex, item_state, ITEM)
        for days in sorted({d for f in features if (d := window_days(f))}):
            # events in [t - days, t) = count before t - count before t - days
            window, shifted = self._item_window_counts(days), f"__t_minus_{days}d"
            ex = _strictly_before(ex, window, ITEM)
            before = window.select(ITEM, pl.col(TS).alias(shifted), pl.exclude(ITEM, TS).name.prefix(THEN))
            ex = _strictly_before(ex.with_columns((pl.col(TS) - timedelta(days=days)).alias(shifted)),
                                  before, ITEM, on=shifted).drop(shifted)
        if "user_category_share" in ops:
            if CAT not in ex.collect_schema():
                ex = ex.with_columns(self._category_of(pl.col(ITEM)).alias(CAT))
            for f in features:
                if f.op == "user_category_share":
                    ex = _strictly_before(ex, self._category_counts(f), [USER, CAT])
        for f in features:  # last: the widest state, copied by no later join
            if f.op == "user_history":
                ex = _strictly_before(ex, self._history(f), USER)
        per_row = [self._lookup(table, F + f.name).alias(F + f.name) for f in features
                   if (table := per_row_table(f)) is not None]
        if any(f.op == "user_tenure_days" for f in features):
            per_row.append(self._lookup("users", SIGNUP_COLUMN).alias(SIGNUP_COLUMN))
        ex, given = ex.with_columns(per_row), set(examples.collect_schema())
        helpers = [c for c in ex.collect_schema() if c.startswith("__") and c not in given]
        return ex.with_columns([encoded_value(f, self.encoders).alias(F + f.name) for f in features]).drop(helpers)


def per_row_table(f: Feature) -> str | None:
    """The table whose rows ``f`` is encoded on once (attributes, and ids with a vocabulary), if any."""
    if f.op == "attribute":
        return f.params["table"]
    if f.op == "id" and f.encoding == "vocab":
        return "users" if f.scope == Scope.USER else "items"
    return None


def encoded_value(f: Feature, encoders: Encoders) -> pl.Expr:
    """The model input of ``f`` on a frame holding its state (`recsys.data.state_spec`'s columns, ``timestamp``,
    the user and item ids, and each per-row feature already encoded as ``f:<name>``, null for a user or item outside
    its table). The offline builder encodes with this; the live store with its numpy twin
    (`recsys.online.live.raw_array`, `recsys.data.encoders.Encoders.array`)."""
    if per_row_table(f) is not None:
        return pl.col(F + f.name).fill_null(0)  # not in the table: unknown
    if f.op == "user_history":
        return encoders.expr(f, pl.col(F + f.name))  # indices already; pads a user with no history
    return encoders.expr(f, raw_value(f))


def raw_value(f: Feature) -> pl.Expr:
    """The value of ``f`` before encoding, for ops computed per example (see `encoded_value`)."""
    p = f.params

    def total(prefix: str, types: list[str]) -> pl.Expr:
        return pl.col(prefix + count_column(types)).fill_null(0)  # no state row yet: nothing happened

    if f.op == "id":
        return pl.col(p["column"])
    if f.op == "user_tenure_days":
        return (pl.col(TS) - pl.col(SIGNUP_COLUMN)).dt.total_seconds() / 86400.0
    if f.op == "user_event_count":
        return total(USER_COUNTS, p["event_types"])
    if f.op == "user_recency_hours":
        return (pl.col(TS) - pl.col(USER_COUNTS + last_column(p["event_types"]))).dt.total_seconds() / 3600.0
    if f.op == "user_category_share":
        in_category, everywhere = total(category_prefix(f), p["event_types"]), total(USER_COUNTS, p["event_types"])
        return pl.when(everywhere > 0).then(in_category / everywhere)
    if f.op == "item_event_count":
        if not (days := p.get("window_days")):
            return total(ITEM_COUNTS, p["event_types"])
        return total(window_prefix(days), p["event_types"]) - total(THEN + window_prefix(days), p["event_types"])
    if f.op == "item_rate":
        num, den = total(ITEM_COUNTS, p["numerator"]), total(ITEM_COUNTS, p["denominator"])
        return (num + p["prior"] * p["prior_strength"]) / (den + p["prior_strength"])
    if f.op == "position":
        return pl.col(POSITION)
    if f.op == "clicked":
        return pl.col(LABEL)
    raise ValueError(f"feature {f.name!r}: no implementation for op {f.op!r}")


def ranking_examples(events: pl.LazyFrame, schema: FeatureSchema) -> pl.LazyFrame:
    """One row per impression with its click label (a click with the same request_id and item)."""
    shown = schema.examples["ranking"]["event_type"]
    clicked = (events.filter((pl.col(TYPE) == "click") & pl.col(REQUEST).is_not_null())
               .select(pl.struct(REQUEST, ITEM)).collect().to_series())
    return (events.filter(pl.col(TYPE) == shown)
            .select(EVENT_ID, TS, USER, ITEM, REQUEST, POSITION)
            .with_columns(pl.struct(REQUEST, ITEM).is_in(clicked.implode()).cast(pl.Float64).alias(LABEL)))


def implies_views(events: pl.DataFrame) -> bool:
    """Whether ``events`` is a log without product views but with clicks (`with_implied_views`)."""
    types = events[TYPE].cast(pl.String)
    return bool((types == "click").any() and not (types == "view").any())


def implied_view_id(click_id: pl.Expr) -> pl.Expr:
    return code_expr(pl.format("view:{}", click_id))


def with_implied_views(events: pl.DataFrame) -> pl.DataFrame:
    """``events`` and, in a log without product views (impressions and clicks only), a view at each click: a click
    opens the product page. Features on views (counts, histories, trailing item counts) and the retrieval positives
    then read the clicks, as they would in a shop that logs its product pages. A log with any view is left as it is.
    (Each implied view's id is the code of ``view:<the click's id>``: `implied_view_id`.)"""
    if not implies_views(events):
        return events
    clicks = events.filter(pl.col(TYPE) == "click")
    views = clicks.with_columns(pl.lit("view").cast(events.schema[TYPE]).alias(TYPE),
                                implied_view_id(pl.col(EVENT_ID)).alias(EVENT_ID))
    return pl.concat([events, views.select(events.columns)]).sort(TS, EVENT_ID)


IMPLICIT_POSITIVES = ("click", "add_to_cart", "purchase")  # retrieval positives of a log with none of the configured


def retrieval_event_types(events: pl.DataFrame, schema: FeatureSchema) -> list[str]:
    """The event types whose events are retrieval positives: the schema's (``examples.retrieval.event_types``), or
    for a log that has none of those (an implicit-feedback log: clicks and purchases, no product views) the
    implicit positives it has."""
    configured = list(schema.examples["retrieval"]["event_types"])
    present = set(events[TYPE].cast(pl.String).unique().to_list())
    if present & set(configured):
        return configured
    return [t for t in IMPLICIT_POSITIVES if t in present]


def retrieval_examples(events: pl.LazyFrame, event_types: list[str]) -> pl.LazyFrame:
    """One positive (user, item) row per interaction of ``event_types`` (`retrieval_event_types`)."""
    return events.filter(pl.col(TYPE).is_in(event_types)).select(EVENT_ID, TS, USER, ITEM)


def task_features(schema: FeatureSchema, task: str) -> list[Feature]:
    """Columns of a task's examples: model inputs (and the label for ranking)."""
    if task == "ranking":
        label = schema.label("dlrm")
        return schema.used_by("dlrm") + ([label] if label else [])
    names = {f.name for part in ("two_tower.user", "two_tower.item") for f in schema.used_by(part)}
    return [f for f in schema.features if f.name in names]


def _named(features: list[Feature]) -> list[pl.Expr]:
    return [pl.col(F + f.name).alias(f.name) for f in features]


def example_rows(builder: FeatureBuilder, task: str) -> pl.LazyFrame:
    """The events that become ``task``'s examples (ranking | retrieval), in (timestamp, event_id) order."""
    if task == "ranking":  # in event order, which every later join keeps
        return ranking_examples(builder.events.lazy(), builder.schema)
    return retrieval_examples(builder.events.lazy(), retrieval_event_types(builder.events, builder.schema))


def encode_examples(builder: FeatureBuilder, rows: pl.LazyFrame, task: str) -> pl.LazyFrame:
    """Metadata and encoded features of example ``rows`` (a time-ordered slice of `example_rows`)."""
    features = task_features(builder.schema, task)
    meta = [pl.col(c).alias(m) for c, m in zip((EVENT_ID, TS, USER, ITEM), META_COLUMNS, strict=True)]
    if task == "ranking":
        meta.append(pl.col(REQUEST).alias(META_REQUEST))
    return builder.add(rows, features).select(*meta, *_named(features))


def build_examples(builder: FeatureBuilder, task: str) -> pl.LazyFrame:
    """All encoded examples of ``task`` at once (`recsys.data.dataset` writes them chunk by chunk)."""
    return encode_examples(builder, example_rows(builder, task), task)


def online_tables(builder: FeatureBuilder, as_of: datetime) -> dict[str, pl.LazyFrame]:
    """The state at ``as_of`` for serving: user features, item features (with each item's category name, for cold
    start within a category), user x category features, and the (user, item) pairs bought before ``as_of`` (the
    purchase filter). Serving then needs nothing outside the dataset folder.

    Built by the same `FeatureBuilder` as the training examples, at one timestamp for everyone.
    """
    schema = builder.schema
    used = {f.name for part in ("two_tower.user", "two_tower.item", "dlrm") for f in schema.used_by(part)}
    user_f = [f for f in schema.by_scope(Scope.USER) if f.name in used]
    item_f = [f for f in schema.by_scope(Scope.ITEM) if f.name in used]
    cross_f = [f for f in schema.by_scope(Scope.CROSS) if f.name in used]
    at = pl.lit(as_of, dtype=pl.Datetime("us", "UTC")).alias(TS)
    tables = {
        "users": builder.add(builder.users.lazy().select(USER, SIGNUP, at), user_f)
        .select(pl.col(USER).alias(META_USER), pl.col(SIGNUP).cast(pl.Datetime("us", "UTC")).alias(META_SIGNUP),
                *_named(user_f)),
        "items": builder.add(builder.items.lazy().select(ITEM, AVAILABLE, CATEGORY, at), item_f)
        .select(pl.col(ITEM).alias(META_ITEM), pl.col(AVAILABLE).alias(META_AVAILABLE),
                pl.col(CATEGORY).cast(pl.String).alias(META_CATEGORY), *_named(item_f)),
        "purchases": builder.events.lazy().filter((pl.col(TYPE) == "purchase") & (pl.col(TS) < as_of))
        .select(pl.col(USER).alias(META_USER), pl.col(ITEM).alias(META_ITEM)).unique().sort(META_USER, META_ITEM),
    }
    if cross_f:
        types = sorted({t for f in cross_f for t in f.params["event_types"]})
        pairs = (builder.events.lazy().filter(pl.col(TYPE).is_in(types))
                 .select(USER, builder._category_of(pl.col(ITEM)).alias(CAT))
                 .unique().drop_nulls().sort(USER, CAT).with_columns(at))
        tables["user_category"] = builder.add(pairs, cross_f).select(
            pl.col(USER).alias(META_USER), builder._category_name(pl.col(CAT)).alias(META_CATEGORY),
            *_named(cross_f))
    return tables

