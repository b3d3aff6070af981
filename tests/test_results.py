import math
import os
import tracemalloc

import pandas as pd
import pytest

from deepfake_toolkit.results import COLUMNS, Bands, ResultColumns, read_csv, \
    read_parquet, read_table, results_frame, summary, write_csv, write_parquet, write_table


def _rows():
    return [
        {"path": "/data/=SUM(A1).jpg", "model": "default", "fake_score": 0.93, "label": "fake",
         "region": "face", "face_crop": True, "no_face_policy": "whole", "face_found": True,
         "n_faces": 2, "face_box": (1.5, 2.0, 30.25, 40.0), "face_prob": 0.998, "width": 64,
         "height": 48, "error": ""},
        {"path": "/data/broken, \"quoted\".jpg", "model": "default", "fake_score": math.nan,
         "label": "error", "region": "", "face_crop": True, "no_face_policy": "whole",
         "face_found": False, "n_faces": 0, "face_box": None, "face_prob": math.nan,
         "width": None, "height": None, "error": "-cannot decode image: @bad"},
    ]


def test_csv_round_trip_keeps_values_and_types(tmp_path):
    frame = results_frame(_rows())
    path = write_csv(frame, tmp_path / "out" / "scores.csv")
    back = read_csv(path)
    assert list(back.columns) == list(COLUMNS)
    assert back["path"].tolist() == frame["path"].tolist()
    assert back["error"].tolist() == frame["error"].tolist()
    assert back["face_box"][0] == (1.5, 2.0, 30.2, 40.0) or back["face_box"][0] == pytest.approx(
        (1.5, 2.0, 30.2, 40.0))
    assert back["face_box"][1] is None
    assert back["fake_score"][0] == pytest.approx(0.93) and math.isnan(back["fake_score"][1])
    assert back["face_crop"].dtype == bool and back["face_found"].tolist() == [True, False]
    assert back["n_faces"].tolist() == [2, 0] and pd.isna(back["width"][1])


def test_formula_cells_are_neutralised_in_the_file(tmp_path):
    path = write_csv(results_frame(_rows()), tmp_path / "scores.csv")
    text = path.read_text(encoding="utf-8")
    assert "/data/=SUM" in text  # starts with "/", so it is safe as it is
    assert ",'-cannot decode image: @bad" in text
    frame = results_frame(_rows())
    frame.loc[0, "path"] = "=HYPERLINK(\"http://x\")"
    text = write_csv(frame, tmp_path / "evil.csv").read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text
    assert read_csv(tmp_path / "evil.csv")["path"][0] == "=HYPERLINK(\"http://x\")"


def test_csv_is_written_atomically_and_readable(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old contents\n")
    write_csv(results_frame(_rows()), target)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
    assert target.read_text().startswith("path,model")
    assert oct(os.stat(target).st_mode & 0o044) == oct(0o044)


def test_bands_mirror_the_original_labels():
    bands = Bands()
    assert [bands(s) for s in (0.95, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)] == [
        "likely fake", "weakly fake", "weakly fake", "uncertain", "uncertain", "weakly real",
        "weakly real", "likely real", "likely real"]


def test_summary_counts():
    counts = summary(results_frame(_rows()))
    assert counts == {"files": 2, "scored": 1, "fakes": 1, "no_face": 0, "errors": 1}


def test_written_files_follow_the_umask_without_changing_it(tmp_path):
    previous = os.umask(0o027)
    try:
        write_csv(results_frame(_rows()), tmp_path / "scores.csv")
        assert os.stat(tmp_path / "scores.csv").st_mode & 0o777 == 0o640
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(previous)


def test_parquet_reads_back_equal_to_csv(tmp_path):
    frame = results_frame(_rows())
    from_csv = read_csv(write_csv(frame, tmp_path / "scores.csv"))
    from_parquet = read_parquet(write_parquet(frame, tmp_path / "scores.parquet"))
    pd.testing.assert_frame_equal(from_parquet, from_csv)
    assert from_parquet["face_box"][0] == (1.5, 2.0, 30.2, 40.0)
    assert from_parquet["face_box"][1] is None
    assert from_parquet["path"][0] == "/data/=SUM(A1).jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "scores.parquet"]


def test_write_table_and_read_table_choose_the_format_by_suffix(tmp_path):
    frame = results_frame(_rows())
    parquet = write_table(frame, tmp_path / "out" / "scores.PARQUET")
    assert parquet.read_bytes()[:4] == b"PAR1"
    csv = write_table(frame, tmp_path / "out" / "scores.csv")
    assert csv.read_text().startswith("path,model")
    pd.testing.assert_frame_equal(read_table(parquet), read_table(csv))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scores.PARQUET",
                                                                    "scores.csv"]


def test_parquet_keeps_the_schema_types_when_a_column_is_all_empty(tmp_path):
    import pyarrow.parquet as pq

    frame = results_frame(_rows()[1:])
    path = write_parquet(frame, tmp_path / "errors.parquet")
    schema = pq.read_schema(path)
    import pyarrow as pa

    assert pa.types.is_list(schema.field("face_box").type)
    assert schema.field("face_box").type.value_type == pa.float64()
    assert schema.field("width").type == pa.int64()
    back = read_parquet(path)
    assert back["face_box"][0] is None and pd.isna(back["width"][0])


def test_repeated_short_texts_are_one_object_per_value_and_paths_stay_exact():
    # Rows from decoding workers arrive unpickled: every "none" is a string of its own.
    rows = [{"path": "/photos/" + "a" * i, "model": "".join(["cn", "n"]),
             "c2pa_status": "".join(["no", "ne"]), "exif_make": "".join(["Can", "on"]),
             "error": "".join(["bro", "ken"]), "fake_score": 0.5} for i in range(50)]
    assert len({id(row["c2pa_status"]) for row in rows}) == 50
    frame = results_frame(rows)
    for column in ("model", "c2pa_status", "exif_make"):
        assert len({id(v) for v in frame[column]}) == 1, column
    assert (frame["c2pa_status"] == "none").all() and (frame["exif_make"] == "Canon").all()
    assert frame["path"].tolist() == [row["path"] for row in rows]
    long_text = "x" * 200  # long texts are left as they are
    assert results_frame([{"path": "p", "exif_software": long_text}])["exif_software"][0] \
        == long_text


def test_result_columns_give_the_table_that_concatenating_the_batches_gives():
    batches = []
    for b in range(4):
        rows = _rows()
        rows[0].update(path=f"/data/{b}.jpg", provenance_says_ai=bool(b % 2),
                       file_size=10 * b, file_mtime=1.5 * b, c2pa_status="none")
        rows[1].update(provenance_says_ai=None)  # missing: a nullable bool stays missing
        batches.append(results_frame(rows))
    gathered = ResultColumns(capacity=3)  # fewer rows announced than come: the columns grow
    for batch in batches:
        gathered.append(batch)
    gathered.append(results_frame([]))
    table = gathered.table()
    expected = pd.concat(batches, ignore_index=True)
    pd.testing.assert_frame_equal(table, expected)
    assert len(gathered) == 8 and table["n_faces"].isna().sum() == 0
    assert table["width"].isna().tolist() == [False, True] * 4
    assert table["face_box"][0] == (1.5, 2.0, 30.25, 40.0) and table["face_box"][1] is None
    assert ResultColumns(10).table().empty


def test_result_columns_take_memory_only_when_rows_come_and_put_the_first_rows_first():
    # A run makes its columns before forking its decoding workers and fills them after: memory
    # allocated before the fork and written after would be copied, so nothing is allocated yet.
    first = results_frame(_rows())
    tracemalloc.start()
    try:
        gathered = ResultColumns(1_000_000, first=first)
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert allocated < 100_000  # a million rows' columns would be over 100 MB
    assert len(gathered) == 2
    later = results_frame([{**row, "path": f"/data/later-{i}.jpg"}
                           for i, row in enumerate(_rows())])
    gathered.append(later)
    expected = pd.concat([results_frame(_rows()), later], ignore_index=True)
    pd.testing.assert_frame_equal(gathered.table(), expected)
    # With no rows appended, the first rows alone are the table.
    pd.testing.assert_frame_equal(ResultColumns(5, first=later).table(), later)
