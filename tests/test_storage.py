"""instraction/storage.py: one meaning of a path (file:// is local), the atomic write, JSON, redaction.

    pytest tests/test_storage.py
"""

import os

from instraction import storage


def test_file_scheme_is_local_and_other_schemes_are_remote(tmp_path):
    assert not storage.is_remote(str(tmp_path)) and not storage.is_remote(f"file://{tmp_path}")
    assert storage.is_remote("s3://bucket/x") and storage.is_remote("http://host/x")
    assert storage.local_path(f"file://{tmp_path}/a") == str(tmp_path / "a")
    fs, path = storage.open_filesystem(f"file://{tmp_path}/a.json")
    assert path == str(tmp_path / "a.json")


def test_write_text_is_whole_and_read_json_reads_it_back(tmp_path):
    target = f"file://{tmp_path}/sub/summary.json"
    storage.write_text(target, '{"steps": 3}')
    assert os.listdir(tmp_path / "sub") == ["summary.json"]  # no partial file left behind
    assert storage.read_json(target) == {"steps": 3}
    assert storage.read_json_or_none(str(tmp_path / "missing.json")) is None
    (tmp_path / "bad.json").write_text("{")
    assert storage.read_json_or_none(str(tmp_path / "bad.json")) is None


def test_redact_masks_secret_keys_and_text_but_passes_numbers(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3tvalue")
    assert storage.redact("abc", "tracking.api_key") == "***"
    assert storage.redact("words", "data.tokenizer") == "words"  # "token" inside a word is no secret key
    assert storage.redact("got s3cr3tvalue at http://u:p@h/x?token=t1") == "got *** at http://***@h/x?token=***"
    assert storage.redact(3, "train.max_steps") == 3 and storage.redact(None) is None
