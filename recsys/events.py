"""The shop event format: what a shop exports and what the data pipeline ingests.

Three tables, documented in the README ("Shop data format"):

* **events**: one row per user action. ``impression`` rows are items shown in a ranked list
  (``request_id`` names the list, ``position`` is the 0-based slot); a ``click`` on a shown item
  carries the same ``request_id``; ``view``, ``add_to_cart`` and ``purchase`` follow on the product
  page (organic ones, from search or browsing, have no ``request_id``).
* **users**: one row per user with its attributes.
* **items**: one row per catalogue item with its attributes.

Everything downstream names these columns through the constants here.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

EVENT_TYPES: tuple[str, ...] = ("impression", "view", "click", "add_to_cart", "purchase")
EventType = pl.Enum(list(EVENT_TYPES))


@dataclass(frozen=True)
class Column:
    """One column of a shop table: its canonical name and dtype, and whether a row needs it."""

    name: str
    dtype: pl.DataType
    required: bool = True
    doc: str = ""
    derived: str = ""  # how a source without the column gets it (`recsys.data.derive`); empty: it cannot


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}

    @property
    def required(self) -> list[str]:
        """The columns a source must have: required, and not derivable when absent."""
        return [c.name for c in self.columns if c.required and not c.derived]


TIMESTAMP = pl.Datetime("us", "UTC")

EVENTS = Table(
    name="events",
    key="event_id",
    columns=(
        Column("event_id", pl.Int64(), doc="unique id of the event",
               derived="a stable hash of the row's values (identical rows are then one event)"),
        Column("timestamp", TIMESTAMP, doc="when it happened (UTC)"),
        Column("user_id", pl.Int64(), doc="who did it (users.user_id)"),
        Column("item_id", pl.Int64(), doc="which item (items.item_id)"),
        Column("event_type", EventType, doc="one of " + ", ".join(EVENT_TYPES)),
        Column("session_id", pl.Int64(), doc="the user's visit",
               derived="a new session after ingest.session_gap_minutes (30) of the user's inactivity"),
        Column("request_id", pl.Int64(), required=False,
               doc="the recommendation list an impression or click belongs to"),
        Column("position", pl.Int32(), required=False, doc="0-based slot of an impression in its list"),
    ),
)

USERS = Table(
    name="users",
    key="user_id",
    columns=(
        Column("user_id", pl.Int64()),
        Column("signup_date", pl.Date(), doc="when the account was created",
               derived="the date of the user's first event"),
        Column("country", pl.String(), required=False, doc="ISO country code"),
        Column("device", pl.String(), required=False, doc="main device: mobile, desktop or tablet"),
    ),
)

ITEMS = Table(
    name="items",
    key="item_id",
    columns=(
        Column("item_id", pl.Int64()),
        Column("category", pl.String(), required=False, doc="catalogue category"),
        Column("brand", pl.String(), required=False),
        Column("price", pl.Float64(), required=False, doc="current price (validation.min_price: 0 by default)"),
        Column("available", pl.Boolean(), required=False, doc="can be sold now (default true)"),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (EVENTS, USERS, ITEMS)}
