"""What state the schema's stateful features read, and what each piece is called.

Both feature paths keep exactly this state: the offline point-in-time builder (`recsys.data.features`, as running
totals per (entity, time)) and the live store (`recsys.store.state`, as hashes and sorted sets advanced by each
event). Both read it by the same column names: the builder computes its model inputs with Polars expressions
(`recsys.data.features.encoded_value`), the live store a request's with their numpy twins (`recsys.online.live`,
where a Polars query per request cost milliseconds), held to the builder's at many instants by the parity test.

Columns (``<types>`` is a sorted, ``+``-joined event type set):

* ``__u_n:<types>``, ``__u_last:<types>``: per user, how many events of those types so far, and when the last one
  happened;
* ``__i_n:<types>``: per item, how many events of those types so far;
* ``__w<days>_n:<types>`` minus ``__then__w<days>_n:<types>``: per item, the events of the trailing ``days``;
* ``__c<feature>_n:<types>``: per (user, category of the item), how many events of those types so far;
* ``f:<feature>``: a user history, as embedding indices, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.schema import Feature, FeatureSchema

TypeSet = tuple[str, ...]

USER_COUNTS, ITEM_COUNTS, THEN = "__u_", "__i_", "__then"
SIGNUP_COLUMN = "__signup"  # the user's signup time, for ``user_tenure_days``


def count_column(types: list[str] | TypeSet) -> str:
    return "n:" + "+".join(sorted(types))


def last_column(types: list[str] | TypeSet) -> str:
    return "last:" + "+".join(sorted(types))


def window_prefix(days: int) -> str:
    return f"__w{days}_"


def category_prefix(f: Feature) -> str:
    return f"__c{f.name}_"


def window_days(f: Feature) -> int | None:
    """The trailing window of an item count feature, if it has one."""
    return f.params.get("window_days") if f.op == "item_event_count" else None


def _type_sets(features: list[Feature], op: str, *params: str) -> frozenset[TypeSet]:
    return frozenset(tuple(sorted(f.params[p])) for f in features if f.op == op for p in params)


@dataclass(frozen=True)
class StateSpec:
    """The state the stateful features of ``features`` need (`of`)."""

    user_counters: frozenset[TypeSet]  # -> __u_n:<types>
    user_last_seen: frozenset[TypeSet]  # -> __u_last:<types>
    item_counters: frozenset[TypeSet]  # -> __i_n:<types>
    windows: dict[int, frozenset[TypeSet]]  # days -> type sets: __w<days>_n:<types>
    histories: tuple[Feature, ...]  # user_history features
    category_shares: tuple[Feature, ...]  # user_category_share features: __c<name>_n:<types>

    @classmethod
    def of(cls, features: list[Feature] | FeatureSchema) -> StateSpec:
        features = list(features.features) if isinstance(features, FeatureSchema) else list(features)
        item_counters = frozenset(tuple(sorted(f.params["event_types"])) for f in features
                                  if f.op == "item_event_count" and not window_days(f))
        windows: dict[int, set[TypeSet]] = {}
        for f in features:
            if days := window_days(f):
                windows.setdefault(days, set()).add(tuple(sorted(f.params["event_types"])))
        return cls(
            user_counters=_type_sets(features, "user_event_count", "event_types")
            | _type_sets(features, "user_category_share", "event_types"),
            user_last_seen=_type_sets(features, "user_recency_hours", "event_types"),
            item_counters=item_counters | _type_sets(features, "item_rate", "numerator", "denominator"),
            windows={days: frozenset(sets) for days, sets in sorted(windows.items())},
            histories=tuple(f for f in features if f.op == "user_history"),
            category_shares=tuple(f for f in features if f.op == "user_category_share"),
        )

    @property
    def event_types(self) -> frozenset[str]:
        """Every event type some state counts (an event of another type changes nothing)."""
        sets = self.user_counters | self.user_last_seen | self.item_counters
        sets |= {s for by_days in self.windows.values() for s in by_days}
        sets |= {tuple(f.params["event_types"]) for f in (*self.histories, *self.category_shares)}
        return frozenset(t for types in sets for t in types)
