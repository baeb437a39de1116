import copy

import pytest
import yaml

from recsys.schema import DEFAULT_SCHEMA_PATH, Kind, SchemaError, Scope, load_schema, parse_schema


@pytest.fixture()
def raw():
    return yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text())


def test_default_schema_loads_with_every_kind(schema):
    kinds = {f.kind for f in schema.features}
    assert kinds == set(Kind)
    assert schema.user_id.name == "user_id" and schema.item_id.name == "item_id"
    assert schema.label("dlrm").kind == Kind.LABEL


def test_hash_ignores_layout_but_not_content(raw, tmp_path, schema):
    reordered = tmp_path / "features.yaml"
    reordered.write_text(yaml.safe_dump(raw, sort_keys=True, default_flow_style=True))  # other layout
    assert load_schema(reordered).hash == schema.hash
    changed = copy.deepcopy(raw)
    changed["features"][0]["encoding"]["buckets"] += 1
    assert parse_schema(changed).hash != schema.hash


def test_model_parts_and_embedding_tables(schema):
    user_part = {f.name for f in schema.used_by("two_tower.user")}
    item_part = {f.name for f in schema.used_by("two_tower.item")}
    assert all(schema[n].scope == Scope.USER for n in user_part)
    assert all(schema[n].scope == Scope.ITEM for n in item_part)
    assert not user_part & item_part  # the towers are separable
    history = schema.history[0]
    assert history.embedding_table == schema.item_id.name  # histories share the item table
    assert history.name in schema.embedding_tables()[schema.item_id.name]
    assert schema.label("dlrm").name not in {f.name for f in schema.used_by("dlrm")}
    with pytest.raises(KeyError, match="unknown model part"):
        schema.used_by("dlrm.towers")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["features"][1].update(kind="sparse"), r"feature 'user_country'.kind: 'sparse' is not one of"),
        (lambda r: r["features"][1]["compute"].update(op="magic"), r"user_country'.compute.op: 'magic'"),
        (lambda r: r["features"][1]["compute"].update(column=7), r"expected the name of a users column"),
        (lambda r: r["features"][1].update(encoding={"type": "dense", "transform": "log1p"}),
         r"'dense' does not suit kind 'categorical'"),
        (lambda r: r["features"][4]["compute"].update(event_types=["like"]), r"user_views'.compute.event_types"),
        (lambda r: r["features"][1].update(used_by=["ranker"]), r"user_country'.used_by"),
        (lambda r: r["features"][1].update(colour="red"), r"unknown field\(s\) \['colour'\]"),
        (lambda r: r["features"].append(copy.deepcopy(r["features"][1])),
         r"duplicate feature names \['user_country'\]"),
        (lambda r: r["features"][7]["encoding"].update(table="sku"), r"no feature named 'sku'"),
        (lambda r: r["features"][7]["encoding"].update(table="user_country"),
         r"'user_history'.encoding.table: a history holds items or one of their attributes.*'user_country' is neither"),
        (lambda r: r["features"].pop(0), r"exactly one feature of kind 'user_id'"),
    ],
)
def test_bad_schema_is_refused_with_a_message_naming_the_field(raw, mutate, message):
    mutate(raw)
    with pytest.raises(SchemaError, match=message):
        parse_schema(raw)
