"""Shop exports in the shapes real shops and public logs have, written from a generated shop (so that what is
learnt from them is the generator's ground truth): their own column names, text ids, no sessions, no users table,
attributes under opaque names, a standardised price.

Each layout returns the folder it wrote and the data config that reads it, as a user would write it by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl


def _events(raw: Path) -> pl.DataFrame:
    return pl.read_parquet(raw / "events" / "*.parquet").sort("timestamp", "event_id")


def _user(column: str) -> pl.Expr:
    return pl.format("U{}", pl.col(column).cast(pl.String).str.zfill(6))


def _sku(column: str) -> pl.Expr:
    return pl.format("SKU-{}", pl.col(column).cast(pl.String).str.zfill(5))


def impressions_and_clicks(raw: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """An impressions-and-clicks log: ``impression_id,user,item,action,time,slot`` (string ids, ISO times, no
    sessions, no product-page events), and ``products.csv`` with opaque attribute names and a price standardised
    to mean 0 (negative values). No users table."""
    out.mkdir(parents=True)
    events = _events(raw).filter(pl.col("event_type").cast(pl.String).is_in(["impression", "click"]))
    events.select(pl.format("imp-{}", pl.col("request_id")).alias("impression_id"), _user("user_id").alias("user"),
                  _sku("item_id").alias("item"), pl.col("event_type").cast(pl.String).alias("action"),
                  pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias("time"),
                  pl.col("position").alias("slot")).write_csv(out / "impressions.csv")
    items = pl.read_parquet(raw / "items.parquet")
    items.select(_sku("item_id").alias("sku"), pl.col("category").alias("c1"), pl.col("brand").alias("c2"),
                 ((pl.col("price") - pl.col("price").mean()) / pl.col("price").std()).alias("std_price")
                 ).write_csv(out / "products.csv")
    config = {"ingest": {
        "events": "impressions.csv", "users": None, "items": "products.csv",
        "columns": {"events": {"request_id": "impression_id", "user_id": "user", "item_id": "item",
                               "event_type": "action", "timestamp": "time", "position": "slot"},
                    "items": {"item_id": "sku", "category": "c1", "brand": "c2", "price": "std_price"}}},
        "validation": {"min_price": None}}
    return out, config


def retailrocket_events(raw: Path, out: Path) -> Path:
    """A product-page log in the shape of RetailRocket's ``events.csv``: ``timestamp,visitorid,event,itemid,
    transactionid`` (epoch milliseconds; view / addtocart / transaction; integer ids; no items or users table)."""
    out.mkdir(parents=True)
    names = {"view": "view", "add_to_cart": "addtocart", "purchase": "transaction"}
    events = _events(raw).filter(pl.col("event_type").cast(pl.String).is_in(list(names)))
    events.select((pl.col("timestamp").dt.epoch("ms")).alias("timestamp"), pl.col("user_id").alias("visitorid"),
                  pl.col("event_type").cast(pl.String).replace_strict(names).alias("event"),
                  pl.col("item_id").alias("itemid"),
                  pl.when(pl.col("event_type") == "purchase").then(pl.col("event_id")).alias("transactionid")
                  ).write_csv(out / "events.csv")
    return out


def movielens_ratings(raw: Path, out: Path) -> Path:
    """A ratings file in MovieLens' shape, ``ratings.csv``: ``userId,movieId,rating,timestamp`` (epoch seconds)
    from the product views, and ``movies.csv``: ``movieId,title,genres``."""
    out.mkdir(parents=True)
    views = _events(raw).filter(pl.col("event_type") == "view")
    views.select(pl.col("user_id").alias("userId"), pl.col("item_id").alias("movieId"),
                 (pl.col("event_id") % 5 + 1).cast(pl.Float64).alias("rating"),
                 pl.col("timestamp").dt.epoch("s").alias("timestamp")).write_csv(out / "ratings.csv")
    pl.read_parquet(raw / "items.parquet").select(
        pl.col("item_id").alias("movieId"), pl.format("Movie {}", pl.col("item_id")).alias("title"),
        pl.col("category").alias("genres")).write_csv(out / "movies.csv")
    return out


def json_reviews(raw: Path, out: Path) -> Path:
    """Product reviews as JSON lines in the shape of the Amazon review dumps, ``reviews.jsonl``:
    ``{"reviewerID", "asin", "overall", "unixReviewTime"}`` (text ids, asins with leading zeros), from adds to cart
    and purchases; ``meta.jsonl``: ``{"asin", "main_cat", "price"}``."""
    out.mkdir(parents=True)
    bought = _events(raw).filter(pl.col("event_type").cast(pl.String).is_in(["add_to_cart", "purchase"]))
    bought.select(pl.format("A{}X", pl.col("user_id")).alias("reviewerID"),
                  pl.col("item_id").cast(pl.String).str.zfill(10).alias("asin"),
                  (pl.col("event_id") % 5 + 1).cast(pl.Float64).alias("overall"),
                  pl.col("timestamp").dt.epoch("s").alias("unixReviewTime")).write_ndjson(out / "reviews.jsonl")
    pl.read_parquet(raw / "items.parquet").select(
        pl.col("item_id").cast(pl.String).str.zfill(10).alias("asin"), pl.col("category").alias("main_cat"),
        pl.col("price")).write_ndjson(out / "meta.jsonl")
    return out
