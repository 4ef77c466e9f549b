"""`.sidecar/restic.json`'s one record per target item ({id, time}: the next run's parent and
the copies' state), read from the shape before it (`parents` and `newest` apart) once."""

from __future__ import annotations

from sidecar.actions.formats.restic import ItemRecord, _write_records, item_records
from sidecar.core.snapshots import parse_forget

OLD = {"parents": {"n1/app/data": "aaaa1111", "n2/app/data": "bbbb2222"},
       "newest": {"app/data": 100.5, "app/postgres+dump": 90.0}, "copied": {"app/data": {"s3": 100.5}}}


def test_the_old_shape_is_read_as_one_record_per_item_of_this_node():
    assert item_records(OLD, "n1") == {"app/data": ItemRecord("aaaa1111", 100.5),
                                       "app/postgres+dump": ItemRecord(None, 90.0)}


def test_writing_keeps_one_record_per_item_and_drops_the_old_shape():
    doc = dict(OLD)
    _write_records(doc, "n1", {"app/data": ItemRecord("cccc3333", 200.0)})
    assert "parents" not in doc and "newest" not in doc
    assert doc["items"] == {"n1/app/data": {"id": "cccc3333", "time": 200.0},
                            "n1/app/postgres+dump": {"id": None, "time": 90.0}}
    assert doc["copied"] == OLD["copied"]  # the rest untouched
    assert item_records(doc, "n1")["app/data"] == ItemRecord("cccc3333", 200.0)
    assert item_records(doc, "n2") == {}  # another node's records are its own


def test_restic_forget_json_gives_what_each_group_kept_and_removed():
    text = ('[{"tags": ["t"], "host": "n1", "paths": ["/volume"], "keep": ['
            '{"id": "22", "short_id": "22", "time": "2026-01-02T00:00:00Z", "hostname": "n1", "paths": ["/volume"],'
            ' "tags": ["backup-sidecar", "target=app", "item=data"]}], "remove": ['
            '{"id": "11", "short_id": "11", "time": "2026-01-01T00:00:00Z", "hostname": "n1", "paths": ["/volume"],'
            ' "tags": ["backup-sidecar", "target=app", "item=data"]}], "reasons": []}]\n')
    forgotten = parse_forget(text)
    assert [s.id for s in forgotten.kept] == ["22"] and [s.id for s in forgotten.removed] == ["11"]
    assert forgotten.kept[0].item == "data" and parse_forget("").kept == ()
