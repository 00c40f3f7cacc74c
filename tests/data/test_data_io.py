"""Readers, writers, bad-row accounting and the built-in shapes dataset."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmtune.data.builtin import COLOURS, make_shapes_dataset
from vlmtune.data.readers import DataError, iter_samples, read_samples
from vlmtune.data.report import BadRows
from vlmtune.data.sample import Sample, validate_sample
from vlmtune.data.writers import PARQUET_SCHEMA, write_jsonl, write_parquet


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def row(n_images: int = 1, answer: str = "red.", images: list | None = None, **extra) -> dict:
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": "What colour?"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "images": images or [], **extra}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def colours(samples: list[Sample]) -> list[tuple[int, int, int]]:
    return [im.getpixel((0, 0)) for s in samples for im in s.load_images()]


RED, GREEN, BLUE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 90, 90)


@pytest.fixture
def image_forms(tmp_path: Path) -> tuple[Path, list, list]:
    """A data folder with one image file per colour, and every image form of them."""
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "red.png").write_bytes(png_bytes(RED))
    outside = tmp_path / "elsewhere" / "green.png"
    outside.parent.mkdir()
    outside.write_bytes(png_bytes(GREEN))
    b64 = base64.b64encode(png_bytes(BLUE)).decode()
    json_forms = ["imgs/red.png", str(outside), b64, "data:image/png;base64," + b64]
    memory_forms = [
        png_bytes(GREY),
        {"bytes": png_bytes(RED), "path": "orig.png"},
        Image.new("RGB", (8, 6), GREEN),
    ]
    return data, json_forms, memory_forms


EXPECTED = [RED, GREEN, BLUE, BLUE, GREY, RED, GREEN]


# ---------------------------------------------------------------------------- JSONL


def test_jsonl_all_image_forms_round_trip(image_forms, tmp_path: Path):
    data, json_forms, memory_forms = image_forms
    path = write_lines(data / "train.jsonl", [row(1, images=[img]) for img in json_forms])
    samples, bad = read_samples(path)
    assert bad.total == 0 and colours(samples) == EXPECTED[:4]
    samples += [Sample(row(1)["messages"], [img], {"i": i}) for i, img in enumerate(memory_forms)]

    out = tmp_path / "out" / "copy.jsonl"
    assert write_jsonl(samples, out) == 7
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    stored = [x["images"][0] for x in lines]
    assert stored[1] == str(image_forms[0].parent / "elsewhere" / "green.png")  # absolute kept
    assert all(s.startswith("images/") and s.endswith(".png") for s in stored[2:])  # in-memory -> files
    assert stored[2] == stored[3]  # same content stored once
    back, bad = read_samples(out)
    assert bad.total == 0 and colours(back) == EXPECTED
    assert back[5].meta == {"i": 1}
    assert not list(out.parent.glob(".*tmp*"))


def test_jsonl_custom_image_dir(tmp_path: Path):
    out = tmp_path / "a" / "train.jsonl"
    write_jsonl([Sample(row(1)["messages"], [png_bytes(RED)])], out, image_dir=tmp_path / "a" / "pix")
    assert json.loads(out.read_text())["images"][0].startswith("pix/")
    assert colours(read_samples(out)[0]) == [RED]


def test_jsonl_bad_rows_are_skipped_and_reported(tmp_path: Path):
    (tmp_path / "ok.png").write_bytes(png_bytes(RED))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    path = write_lines(tmp_path / "mixed.jsonl", [
        row(1, images=["ok.png"]),  # line 1
        row(1, images=["broken.png"]),  # line 2: unreadable
        row(2, images=["ok.png"]),  # line 3: placeholder mismatch
        '{"messages": [ oops',  # line 4: malformed
        "",  # line 5: blank, ignored
        row(1, images=["gone.png"]),  # line 6: missing
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # 7: order
        row(0, answer="fine"),  # line 8
    ])
    samples, bad = read_samples(path)
    assert [s.messages[1]["content"][0]["text"] for s in samples] == ["red.", "fine"]
    assert [s.source for s in samples] == [(str(path), 1), (str(path), 8)]
    assert [(r.file, r.row, r.reason) for r in bad] == [
        (str(path), 2, "unreadable_image"),
        (str(path), 3, "placeholder_mismatch"),
        (str(path), 4, "malformed_json"),
        (str(path), 6, "missing_image"),
        (str(path), 7, "bad_role_order"),
    ]
    assert bad.total == 5 and sum(bad.counts().values()) == 5
    assert "5 bad rows skipped" in bad.summary() and "malformed_json 1" in bad.summary()
    report = bad.write_jsonl(tmp_path / "report" / "bad_rows.jsonl")
    first = json.loads(report.read_text().splitlines()[0])
    assert set(first) == {"file", "row", "reason", "detail"} and first["row"] == 2


def test_on_bad_row_error_names_file_row_and_reason(tmp_path: Path):
    path = write_lines(tmp_path / "t.jsonl", [row(0), row(0), row(1, images=["gone.png"])])
    with pytest.raises(DataError) as info:
        read_samples(path, on_bad_row="error")
    message = str(info.value)
    assert str(path) in message and "row 3" in message and "missing_image" in message
    assert (info.value.row, info.value.reason) == (3, "missing_image")
    assert str(DataError("data.train_path is not set")) == "data.train_path is not set"


def test_bad_rows_accumulate_across_files(tmp_path: Path):
    a = write_lines(tmp_path / "a.jsonl", ["{", row(0)])
    b = write_lines(tmp_path / "b.jsonl", [row(0), "["])
    report = BadRows()
    read_samples(a, bad_rows=report)
    _, same = read_samples(b, bad_rows=report)
    assert same is report and [(Path(r.file).name, r.row) for r in report] == [("a.jsonl", 1), ("b.jsonl", 2)]


def test_iter_samples_without_report_logs_a_summary(tmp_path: Path, caplog):
    path = write_lines(tmp_path / "t.jsonl", ["{", row(0)])
    assert len(list(iter_samples(path))) == 1
    assert "1 bad row skipped" in caplog.text


def test_prompt_only_mode(tmp_path: Path):
    prompt = {"messages": [{"role": "user", "content": "2+2?"}], "meta": {"answer": "4"}}
    path = write_lines(tmp_path / "p.jsonl", [prompt, row(0)])
    samples, bad = read_samples(path, require_assistant=False)
    assert len(samples) == 2 and samples[0].meta == {"answer": "4"}  # a reference answer may follow
    assert bad.total == 0
    samples, bad = read_samples(path)
    assert [(r.row, r.reason) for r in bad] == [(1, "no_assistant_turn")]


def test_limit_counts_valid_samples(tmp_path: Path):
    path = write_lines(tmp_path / "t.jsonl", ["{"] + [row(0, answer=str(i)) for i in range(10)])
    samples, bad = read_samples(path, limit=3)
    assert [s.messages[1]["content"][0]["text"] for s in samples] == ["0", "1", "2"]
    assert bad.total == 1


def test_json_array_and_bom(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([row(0), {"messages": "nope"}]))
    samples, bad = read_samples(path)
    assert len(samples) == 1 and [(r.row, r.reason) for r in bad] == [(1, "bad_schema")]
    lines = tmp_path / "l.json"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(row(0)).encode() + b"\n")
    assert len(read_samples(lines)[0]) == 1


def test_file_level_errors(tmp_path: Path):
    with pytest.raises(DataError, match=r"\.jsonl, \.json, \.parquet"):
        read_samples(tmp_path / "data.csv")
    with pytest.raises(DataError, match="no such file"):
        read_samples(tmp_path / "absent.jsonl")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="Parquet"):
        read_samples(tmp_path / "x.parquet")
    pq.write_table(pa.table({"text": ["hi"]}), tmp_path / "y.parquet")
    with pytest.raises(DataError, match="messages"):
        read_samples(tmp_path / "y.parquet")


# ---------------------------------------------------------------------------- Parquet


@pytest.mark.parametrize("embed", [True, False])
def test_parquet_round_trip_all_image_forms(image_forms, tmp_path: Path, embed: bool):
    data, json_forms, memory_forms = image_forms
    samples = [Sample.from_dict(row(1, images=[img]), base_dir=data) for img in json_forms]
    samples += [
        Sample(row(1)["messages"], [img], {"i": i, "nested": {"ok": [1, 2]}}) for i, img in enumerate(memory_forms)
    ]
    out = data / "train.parquet"
    assert write_parquet(samples, out, embed_images=embed) == 7
    table = pq.read_table(out)
    assert table.schema.equals(PARQUET_SCHEMA, check_metadata=False)
    images = table.column("images").to_pylist()
    assert (images[0][0]["bytes"] is not None) == embed and images[0][0]["path"] == "imgs/red.png"
    assert images[5][0]["path"] == "orig.png" and images[4][0]["bytes"] is not None

    back, bad = read_samples(out)
    assert bad.total == 0 and colours(back) == EXPECTED
    assert [s.messages for s in back] == [s.messages for s in samples]
    assert back[6].meta == {"i": 2, "nested": {"ok": [1, 2]}}


def test_parquet_struct_columns_and_string_images(tmp_path: Path):
    (tmp_path / "r.png").write_bytes(png_bytes(RED))
    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    messages = [
        [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "q"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "red."}]}],
    ] * 2
    table = pa.table({
        "messages": pa.array(messages, pa.list_(message)),
        "images": pa.array([["r.png"], [base64.b64encode(png_bytes(BLUE)).decode()]], pa.list_(pa.string())),
        "meta": pa.array([{"answer": "red"}, {"answer": "blue"}], pa.struct([("answer", pa.string())])),
        "level": [1, 2],
    })
    pq.write_table(table, tmp_path / "s.parquet")
    samples, bad = read_samples(tmp_path / "s.parquet")
    assert bad.total == 0 and colours(samples) == [RED, BLUE]
    assert samples[0].messages[0]["content"][0] == {"type": "image"}
    assert samples[1].meta == {"answer": "blue", "level": 2}

    map_meta = pa.array([[("answer", "red")], None], pa.map_(pa.string(), pa.string()))
    pq.write_table(table.set_column(2, "meta", map_meta), tmp_path / "m.parquet")
    samples, _ = read_samples(tmp_path / "m.parquet")
    assert samples[0].meta == {"answer": "red", "level": 1} and samples[1].meta == {"level": 2}


def test_parquet_json_string_columns_and_bad_rows(tmp_path: Path):
    good = row(1, images=[])
    table = pa.table({
        "messages": [json.dumps(good["messages"]), "[{broken", json.dumps(good["messages"])],
        "images": pa.array([[{"bytes": png_bytes(RED), "path": None}], [], []], PARQUET_SCHEMA.field("images").type),
        "meta": ['{"answer": "red"}', "{}", "{}"],
    })
    pq.write_table(table, tmp_path / "j.parquet")
    samples, bad = read_samples(tmp_path / "j.parquet")
    assert len(samples) == 1 and samples[0].meta == {"answer": "red"}
    assert [(r.row, r.reason) for r in bad] == [(1, "malformed_json"), (2, "placeholder_mismatch")]
    with pytest.raises(DataError, match=r"j\.parquet, row 1: malformed_json"):
        read_samples(tmp_path / "j.parquet", on_bad_row="error")


def test_streaming_reader_on_multi_batch_parquet(tmp_path: Path, monkeypatch):
    def samples():
        for i in range(50):
            answer = str(i)
            images = [png_bytes((i, 0, 0))] if i != 37 else []  # row 37: placeholder mismatch
            yield Sample(row(1, answer=answer)["messages"], images)

    out = tmp_path / "big.parquet"
    assert write_parquet(samples(), out, batch_size=8) == 50
    assert pq.ParquetFile(out).metadata.num_row_groups == 7

    batch_sizes = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            batch_sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    report = BadRows()
    it = iter_samples(out, batch_size=5, bad_rows=report)
    first = next(it)
    assert first.messages[1]["content"][0]["text"] == "0" and batch_sizes == [5]  # only one batch read
    rest = list(it)
    assert len(rest) == 48 and max(batch_sizes) == 5 and sum(batch_sizes) == 50
    assert [(r.row, r.reason) for r in report] == [(37, "placeholder_mismatch")]
    assert colours(rest)[-1] == (49, 0, 0)


def test_writer_error_names_sample(tmp_path: Path):
    bad_meta = Sample(row(0)["messages"], [], {"x": object()})
    with pytest.raises(DataError, match="row 1"):
        write_parquet([Sample(row(0)["messages"]), bad_meta], tmp_path / "w.parquet")
    assert not (tmp_path / "w.parquet").exists() and not list(tmp_path.iterdir())
    with pytest.raises(DataError, match="unreadable_image"):
        write_jsonl([Sample(row(1)["messages"], ["data:image/png;base64,???"])], tmp_path / "w.jsonl")


def test_convert_jsonl_to_parquet_streams_with_report(tmp_path: Path):
    path = write_lines(tmp_path / "t.jsonl", [row(0), "{", row(0)])
    report = BadRows()
    assert write_parquet(iter_samples(path, bad_rows=report), tmp_path / "t.parquet") == 2
    assert report.total == 1 and len(read_samples(tmp_path / "t.parquet")[0]) == 2


# ---------------------------------------------------------------------------- builtin


def test_shapes_dataset_is_deterministic_and_valid(tmp_path: Path):
    a = make_shapes_dataset(tmp_path / "a", n=24, seed=3, image_size=64, eval_n=6)
    b = make_shapes_dataset(tmp_path / "b", n=24, seed=3, image_size=64, eval_n=6)
    c = make_shapes_dataset(tmp_path / "c", n=24, seed=4, image_size=64)
    assert a.name == "train.jsonl" and a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert (a.parent / "eval.jsonl").read_bytes() == (b.parent / "eval.jsonl").read_bytes()
    assert not (c.parent / "eval.jsonl").exists()
    for name in ("train-00000.png", "eval-00005.png"):
        assert (a.parent / "images" / name).read_bytes() == (b.parent / "images" / name).read_bytes()

    train, bad = read_samples(a, on_bad_row="error")
    evals, _ = read_samples(a.parent / "eval.jsonl", on_bad_row="error")
    assert len(train) == 24 and len(evals) == 6 and bad.total == 0
    assert {s.meta["question"] for s in train} == {"colour", "shape"}
    for s in train + evals:
        validate_sample(s)
        meta, answer = s.meta, s.messages[-1]["content"][0]["text"]
        expected = f"A {meta['colour']} {meta['shape']}." if meta["question"] == "shape" else f"{meta['colour']}."
        assert answer == expected
        image = s.load_images()[0]
        assert image.size == (64, 64)
        counts = sorted(image.getcolors(64 * 64), reverse=True)
        assert COLOURS[meta["colour"]] in [colour for _, colour in counts[:2]]  # background + shape


def test_shapes_default_size(tmp_path: Path):
    path = make_shapes_dataset(tmp_path, n=2)
    assert read_samples(path)[0][0].load_images()[0].size == (168, 168)
