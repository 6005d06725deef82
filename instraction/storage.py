"""Where files live: one meaning of a path for every component (data, curation, bench, training, the workflow).

A path is *local* (a directory, a file or a glob, ``~`` expanded; ``file://`` is the same as the bare path) or
*remote* (any other ``scheme://``). The one remote store read and written is S3 (``s3://`` or ``s3a://``), through
s3fs, with the endpoint from ``data.s3.endpoint_url`` or ``AWS_ENDPOINT_URL`` (MinIO, moto, R2...) and credentials
from the standard AWS chain, never from config. Every message that may hold a path or an error passes through
:func:`redact`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from instraction.data.config import S3Config

log = logging.getLogger(__name__)

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_SECRET_PARAMS = re.compile(
    r"(?i)(aws_secret_access_key|aws_access_key_id|aws_session_token|secret|password|token|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|signature|credential)(['\"]?\s*[=:]\s*['\"]?)"
    r"([^&\s'\",}]+)"
)
_SECRET_KEY = re.compile(
    r"(^|[_-])(secret|password|passwd|token|credentials?|api[_-]?key|access[_-]?key|private[_-]?key)($|[_-])", re.I)
_URL_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def redact(value: Any, key: str | None = None) -> Any:
    """``value`` with credentials removed, for a log line, a row, a file or an MLflow param/tag.

    A ``key`` whose last dotted part looks secret (``s3.aws_secret_access_key``, ``api_key``) masks the whole value.
    Text loses the values of the AWS credential env vars, ``secret=...``-like parameters and ``user:pass@`` in URLs.
    None, numbers and bools pass unchanged; anything else is redacted as its ``str``.
    """
    if value is None:
        return None
    if key is not None and _SECRET_KEY.search(key.split(".")[-1]):
        return "***"
    if isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _URL_USERINFO.sub(r"\1***@", text)


def is_remote(path: str) -> bool:
    """True for ``scheme://...`` other than ``file://``."""
    path = str(path)
    return "://" in path and not path.startswith("file://")


def is_s3(path: str) -> bool:
    return str(path).startswith(("s3://", "s3a://"))


def local_path(path: str) -> str:
    """A local path without ``file://``, ``~`` expanded, absolute."""
    path = str(path)
    path = path[len("file://"):] if path.startswith("file://") else path
    return os.path.abspath(os.path.expanduser(path))


def resolve(path: str) -> str:
    """Remote paths as given; local ones absolute with symlinks resolved (what workers in another cwd need)."""
    return str(path) if is_remote(path) else str(Path(local_path(path)).resolve())


def open_filesystem(path: str, s3: Optional["S3Config"] = None):
    """``(fsspec filesystem, path without protocol)`` for a local path or an ``s3://`` URI."""
    import fsspec

    path = str(path)
    if is_s3(path):
        import s3fs

        from instraction.data.config import S3Config

        s3 = s3 or S3Config()
        endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        client_kwargs = {"region_name": s3.region} if s3.region else {}
        fs = s3fs.S3FileSystem(
            anon=s3.anon, endpoint_url=endpoint, client_kwargs=client_kwargs, use_listings_cache=False
        )
        return fs, path.split("://", 1)[1].rstrip("/")
    return fsspec.filesystem("file"), local_path(path)


def write_text(path: str, text: str, s3=None) -> None:
    """Write a small text file, whole or not at all: locally through a temporary file and a rename; an S3 object
    appears only once its upload completes."""
    if not is_remote(path):
        target = Path(local_path(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_text(text)
        os.replace(tmp, target)
        return
    fs, target = open_filesystem(path, s3)
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(target, "w") as f:
        f.write(text)


def read_json(path: str, s3=None) -> Any:
    """The JSON document at ``path`` (local or s3://); raises FileNotFoundError / OSError / ValueError."""
    fs, target = open_filesystem(path, s3)
    with fs.open(target, "rb") as f:  # bytes: json detects UTF-8/16/32 itself, whatever the locale
        return json.load(f)


def read_json_or_none(path: str, s3=None) -> Any:
    """:func:`read_json`, or None when the file is missing or unreadable (logged, redacted)."""
    try:
        return read_json(path, s3)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("cannot read %s: %s", redact(path), redact(err))
        return None


def read_parquet_state(fs, path: str, key: bytes) -> Optional[dict]:
    """The JSON state stored under ``key`` in a Parquet file's footer (the cache state of a per-shard output: the
    annotation table, the frames store); None when there is no file, no such key, or the file is torn or foreign
    (logged, redacted): the caller then writes that shard again."""
    import pyarrow.parquet as pq

    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f).metadata or {}
        return json.loads(meta[key]) if key in meta else None
    except Exception as err:  # torn or foreign: rewrite it
        log.warning("unreadable Parquet state in %s", redact(f"{path}: {err}"))
        return None
