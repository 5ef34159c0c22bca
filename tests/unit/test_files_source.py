"""Reading archives: layouts, gzip (whole, truncated, multi-member), bad files, date paths."""

from __future__ import annotations

import gzip
import zlib
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sources.files import (
    Body,
    Unpacker,
    count_local_files,
    date_of_key,
    is_cloudtrail_file,
    iter_local,
    parse_s3_url,
    read_local,
    split_document,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SAMPLES = FIXTURES / "samples"
CT_RECORD: dict[str, Any] = orjson.loads(
    (SAMPLES / "cloudtrail" / "panther-createuser-console.json").read_bytes())
GD_EVENT = (SAMPLES / "guardduty" / "custodian-ec2-duty-event.json").read_bytes()


class Errors:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, name: str, reason: str, detail: str) -> None:
        self.seen.append((name, reason))

    @property
    def reasons(self) -> list[str]:
        return [r for _, r in self.seen]


def _split(data: bytes) -> tuple[list[Body], Errors]:
    errors = Errors()
    return list(split_document("f", data, errors)), errors


@pytest.mark.parametrize(("data", "names", "records"), [
    (GD_EVENT, ["f"], None),
    (orjson.dumps([orjson.loads(GD_EVENT), orjson.loads(GD_EVENT)]), ["f#0", "f#1"], None),
    (GD_EVENT.replace(b"\n", b"") + b"\n\n" + GD_EVENT.replace(b"\n", b"") + b"\n",
     ["f#L1", "f#L2"], None),
    (orjson.dumps({"Messages": [{"MessageId": "1", "Body": GD_EVENT.decode()}]}), ["f#0"], None),
    (orjson.dumps({"Records": [CT_RECORD, CT_RECORD]}), ["f"], 2),
])
def test_layouts(data: bytes, names: list[str], records: int | None) -> None:
    bodies, errors = _split(data)
    assert [b.name for b in bodies] == names
    assert errors.seen == []
    if records is None:
        assert all(b.records is None and orjson.loads(b.data) for b in bodies)
    else:
        assert bodies[0].records is not None and len(bodies[0].records) == records


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty_file"),
    (b"   \n", "empty_file"),
    (b'{"detail-type": "GuardDuty Finding",\n "source": ', "invalid_json"),
    (b"not json at all\nsecond line", "invalid_json"),
    (orjson.dumps({"Messages": [{"MessageId": "1"}]}), "bad_sqs_dump"),
])
def test_unusable_documents_are_reported(data: bytes, reason: str) -> None:
    bodies, errors = _split(data)
    assert bodies == []
    assert errors.reasons == [reason]


def test_cloudtrail_file_with_a_non_object_record_keeps_the_others() -> None:
    bodies, errors = _split(orjson.dumps({"Records": [CT_RECORD, 7, CT_RECORD]}))
    assert len(bodies) == 1 and bodies[0].records is not None
    assert len(bodies[0].records) == 2
    assert errors.reasons == ["cloudtrail_record_not_object"]


@pytest.mark.parametrize(("doc", "expected"), [
    ({"Records": [CT_RECORD]}, True),
    ({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                   "eventTime": "2024-01-01T00:00:00Z", "eventVersion": "2.1"}]}, False),
    ({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, False),
    ({"Records": []}, False),
    ({"Records": ["x"]}, False),
    ({"detail": {}}, False),
])
def test_is_cloudtrail_file(doc: dict[str, Any], expected: bool) -> None:
    assert is_cloudtrail_file(doc) is expected


def test_local_tree_gzip_and_bad_files(tmp_path: Path) -> None:
    ok = tmp_path / "AWSLogs" / "1" / "CloudTrail" / "us-east-1" / "2024" / "01" / "02"
    ok.mkdir(parents=True)
    doc = orjson.dumps({"Records": [CT_RECORD]})
    (ok / "a.json.gz").write_bytes(gzip.compress(doc))
    (ok / "b.json.gz").write_bytes(gzip.compress(doc)[:-12])  # truncated
    (ok / "c.json.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)  # not deflate at all
    (ok / "d.json").write_bytes(b"{oops")
    (ok / "README.md").write_text("not an input")  # ignored: not an event file suffix
    errors = Errors()
    bodies = list(iter_local([str(tmp_path)], errors))
    assert [Path(b.name).name for b in bodies] == ["a.json.gz"]
    assert sorted(errors.reasons) == ["bad_gzip", "bad_gzip", "invalid_json"]
    assert count_local_files([str(tmp_path)]) == 4


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    errors = Errors()
    (tmp_path / "empty").mkdir()
    assert list(iter_local([str(tmp_path / "empty"), str(tmp_path / "nope")], errors)) == []
    assert errors.reasons == ["empty_input", "missing_input"]


def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl.gz"
    line = GD_EVENT.replace(b"\n", b"") + b"\n"
    path.write_bytes(gzip.compress(line) + gzip.compress(line))
    assert read_local(path, Errors()) == line + line


def test_decompressed_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(gzip.compress(b" " * 5_000_000))
    errors = Errors()
    assert read_local(path, errors, max_bytes=1_000_000) is None
    assert errors.reasons == ["object_too_large"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_unpacker_matches_gzip_whatever_the_chunking(data: bytes, chunk: int) -> None:
    packed = gzip.compress(data)
    unpacker = Unpacker("x", Errors(), 1 << 20)
    for i in range(0, len(packed), chunk):
        assert unpacker.feed(packed[i:i + chunk])
    assert unpacker.finish() == data


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_unpacker_never_returns_a_truncated_stream(data: bytes, draw: st.DataObject) -> None:
    packed = gzip.compress(data)
    cut = draw.draw(st.integers(min_value=2, max_value=len(packed) - 1))
    errors = Errors()
    unpacker = Unpacker("x", errors, 1 << 20)
    unpacker.feed(packed[:cut])
    assert unpacker.finish() is None
    assert errors.reasons == ["bad_gzip"]


def test_plain_bytes_pass_through() -> None:
    unpacker = Unpacker("x", Errors(), 100)
    assert unpacker.feed(b"{}") and unpacker.finish() == b"{}"
    assert zlib  # the module the unpacker relies on is the stdlib one


@pytest.mark.parametrize(("key", "day"), [
    ("AWSLogs/123456789012/CloudTrail/us-east-1/2024/01/31/x.json.gz", date(2024, 1, 31)),
    ("AWSLogs/o-abc/123456789012/CloudTrail/eu-west-1/2023/12/01/y.json.gz", date(2023, 12, 1)),
    ("AWSLogs/123456789012/CloudTrail/us-east-1/2024/02/30/x.json.gz", None),
    ("flat/key.json", None),
])
def test_date_of_key(key: str, day: date | None) -> None:
    assert date_of_key(key) == day


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/AWSLogs/1/") == ("bucket", "AWSLogs/1/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
