"""Turning a URL into filesystems: one place that knows about protocols.

A URL is a plain path (relative or absolute), a `file://` URL, or any fsspec
URL (`memory://`, `s3://`, `gs://`, ...). This module gives back an fsspec
filesystem (for listing and globbing) or a pyarrow filesystem (for pyarrow's
Parquet readers and for Ray Train's `RunConfig(storage_filesystem=...)`),
each with the path inside it. It knows nothing about training or Parquet.
"""

from __future__ import annotations

import json
import os

import fsspec
import fsspec.core
import pyarrow.fs
from fsspec.registry import known_implementations

from orchestrator.errors import DataError

_LOCAL_PROTOCOLS = (None, "file", "local")


def _protocol(url: str) -> str | None:
    """The outermost protocol of `url` (`s3` for `s3://b/k`), or None for a plain path."""
    protocol, _ = fsspec.core.split_protocol(url)
    return protocol


def is_local(url: str) -> bool:
    """True for plain paths (relative or absolute) and `file://` / `local://` URLs."""
    return _protocol(url) in _LOCAL_PROTOCOLS


def absolute(url: str) -> str:
    """A local path or `file://` URL as an absolute plain path; any other URL unchanged.

    `~` is expanded and relative paths are resolved against the current
    directory. Symlinks are not resolved, so glob patterns pass through intact.
    """
    if not is_local(url):
        return url
    _, path = fsspec.core.split_protocol(url)
    return os.path.abspath(os.path.expanduser(path))


def _open_error(url: str, exc: Exception) -> DataError:
    """A DataError for fsspec refusing `url`: an unknown protocol, or which package to install."""
    protocol = _protocol(url) or ""
    known = known_implementations.get(protocol.split("::")[-1])
    if not isinstance(exc, ImportError):
        if known is not None:
            return DataError(f"Cannot open {url!r}: {exc}")
        return DataError(
            f"Cannot open {url!r}: the protocol {protocol}:// is not known to fsspec ({exc}). "
            "Use a plain path, file://, memory://, s3://, gs:// or another fsspec protocol."
        )
    if known is None:
        return DataError(f"Cannot open {url!r}: {exc}")
    package = known["class"].split(".")[0]
    if package == "fsspec":
        # A built-in implementation that needs extra modules (http needs aiohttp):
        # fsspec's own message names them.
        package = getattr(exc, "name", None)
    how = f"Install it with `pip install {package}`." if package else "`pip install` the packages it names."
    return DataError(
        f"Cannot open {url!r}: the {protocol}:// filesystem needs an optional package "
        f"that is not installed ({exc}). {how}"
    )


def fsspec_filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it.

    Local URLs give fsspec's LocalFileSystem and an absolute path. An unknown
    protocol or a missing optional package (s3fs, gcsfs, ...) raises a
    DataError that names the package to `pip install`.
    """
    if is_local(url):
        return fsspec.filesystem("file"), absolute(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise _open_error(url, exc) from None
    return fs, path


def arrow_filesystem(url: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem for `url` and the path inside it.

    Local URLs get pyarrow's native LocalFileSystem (the fast path) and an
    absolute path; any other URL gets its fsspec filesystem wrapped in
    `PyFileSystem(FSSpecHandler(...))`, so paths from `fsspec_filesystem`
    listings work unchanged in it. Errors are those of `fsspec_filesystem`.
    """
    if is_local(url):
        return pyarrow.fs.LocalFileSystem(), absolute(url)
    fs, path = fsspec_filesystem(url)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def join(url: str, *parts: str) -> str:
    """`url` with `parts` appended, separated by single '/', keeping its protocol.

    `join("s3://bucket/runs", "exp1", "ckpt")` is `"s3://bucket/runs/exp1/ckpt"`;
    `join("memory://", "a")` is `"memory://a"`. Empty parts are skipped.
    """
    result = url
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        if result.endswith("://") or result == "":
            result = result + part
        else:
            result = result.rstrip("/") + "/" + part if result.rstrip("/") else "/" + part
    return result


def write_json(filesystem: pyarrow.fs.FileSystem, path: str, payload: dict) -> None:
    """Write `payload` as indented JSON to `path` on `filesystem`."""
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(filesystem: pyarrow.fs.FileSystem, path: str) -> dict | None:
    """The JSON object at `path`, or None if there is no such file."""
    try:
        with filesystem.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
