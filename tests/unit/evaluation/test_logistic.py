"""Logistic regression on the DLRM's inputs: its design matrix by hand, and that it learns the tiny shop."""

import numpy as np
import pytest

from recsys.evaluation.logistic import Columns, LogisticBaseline, design_matrix
from recsys.evaluation.metrics import auc
from recsys.models.inputs import InputSpec
from recsys.schema import Kind


@pytest.fixture(scope="module")
def spec(schema):
    return InputSpec.for_part(schema, "dlrm")


def test_the_design_matrix_by_hand(tiny_dataset, spec):
    rows = tiny_dataset.read("ranking", "train").head(50)
    columns = Columns.fit(rows, spec, tiny_dataset.manifest.cardinalities)
    x = design_matrix(rows, spec, columns).toarray()
    assert x.shape == (50, columns.width)
    row = rows.row(7, named=True)
    expected = np.zeros(columns.width)
    at = 0
    for f in spec.sparse:
        if f.kind == Kind.HISTORY:
            items = [i for i in row[f.name] if i != 0]
            for i in items:
                expected[at + i] += 1 / len(items)
        else:
            expected[at + row[f.name]] = 1.0
        at += tiny_dataset.manifest.cardinalities[f.embedding_table]
    for j, f in enumerate(spec.dense):
        values = rows[f.name].to_numpy().astype(float)
        std = values.std() or 1.0
        expected[at + j] = (row[f.name] - values.mean()) / std
    np.testing.assert_allclose(x[7], expected, atol=1e-9)


def test_it_learns_the_tiny_shop_better_than_popularity_and_predicts_its_click_rate(tiny_dataset, schema, spec):
    fitted = LogisticBaseline.fit(tiny_dataset.read("ranking", "train"), spec, tiny_dataset.manifest.cardinalities)
    test = tiny_dataset.read("ranking", "test")
    p, y = fitted.predict(test), test["click"].to_numpy()
    popularity = next(f for f in schema.features if f.op == "item_event_count").name
    assert auc(y, p) > auc(y, test[popularity].to_numpy())
    assert p.mean() == pytest.approx(y.mean(), rel=0.25)


def test_ids_outside_the_tables_are_refused(tiny_dataset, spec):
    rows = tiny_dataset.read("ranking", "train").head(5)
    columns = Columns.fit(rows, spec, tiny_dataset.manifest.cardinalities)
    first = spec.sparse[0].name
    with pytest.raises(ValueError, match=f"{first}: ids must be in"):
        design_matrix(rows.with_columns(rows[first] + 10**9), spec, columns)
