"""Saved checkpoint directories → storage, in the background, manifest last.

`Uploader` is what the training loops hold: one thread that copies each
saved directory into the run folder in order, retrying each file with
backoff, so a checkpoint is durable as soon as its upload finishes and the
training thread waits only when storage falls behind. A directory's
manifest is copied last, so one cut short never looks complete
(`checkpoint.verify`).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time

import pyarrow.fs

from orchestrator.errors import CheckpointError, first_line
from orchestrator.train.checkpoint import MANIFEST_FILE, unused_name

UPLOAD_ATTEMPTS = 4  # tries of each file of a checkpoint upload
UPLOAD_BACKOFF_S = 0.5  # the wait before the second try; doubled before each next one


def upload(local_directory: str, fs: pyarrow.fs.FileSystem, destination: str) -> None:
    """Copy a saved checkpoint into storage, the manifest last: a manifest in storage means complete.

    Each file is tried UPLOAD_ATTEMPTS times with exponential backoff; a failure that persists raises
    the storage's OSError, and the checkpoint, without its manifest, never looks complete.
    """
    _retried(lambda: fs.create_dir(destination, recursive=True))
    names = sorted(os.listdir(local_directory), key=lambda name: name == MANIFEST_FILE)
    local = pyarrow.fs.LocalFileSystem()
    for name in names:
        _retried(lambda name=name: pyarrow.fs.copy_files(
            os.path.join(local_directory, name),
            f"{destination}/{name}",
            source_filesystem=local,
            destination_filesystem=fs,
        ))


def _retried(action) -> None:
    for attempt in range(UPLOAD_ATTEMPTS):
        try:
            action()
            return
        except OSError:
            if attempt == UPLOAD_ATTEMPTS - 1:
                raise
            time.sleep(UPLOAD_BACKOFF_S * 2 ** attempt)


class Uploader:
    """Uploads saved checkpoints to storage in one background thread, in order, manifest last.

    A checkpoint is durable as soon as its upload finishes, whatever else is
    queued. At most `max_pending` uploads wait at once: `submit` blocks (a
    stall, not a skip) only when storage is slower than checkpoints are taken.
    The local copy is deleted after its upload.
    """

    def __init__(self, fs: pyarrow.fs.FileSystem, run_path: str, max_pending: int = 2):
        self.fs, self.run_path, self.max_pending = fs, run_path, max_pending
        self.completed: str | None = None  # the newest checkpoint this uploader finished
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator-upload")
        self._futures: list[concurrent.futures.Future] = []

    def submit(
        self, local_directory: str, name: str, on_done=lambda name: None, keep_local: bool = False,
        overwrite: bool = True,
    ) -> concurrent.futures.Future:
        """Queue the upload of `local_directory` as `<run>/<name>`; the future resolves to its storage path,
        and `on_done` hears the name it was written under.

        Without `overwrite`, a directory already there is left alone and the upload goes to the name's
        first free retake (`unused_name`). The local copy is deleted afterwards unless `keep_local` (to
        upload it again under another name).
        """
        self._futures = [f for f in self._futures if not f.done()]
        while len(self._futures) >= self.max_pending:
            self._futures.pop(0).result()

        def work() -> str:
            written = name if overwrite else unused_name(self.fs, self.run_path, name)
            destination = f"{self.run_path}/{written}"
            try:
                upload(local_directory, self.fs, destination)
            except OSError as error:
                resume = (f"{self.completed} stays the newest complete one, the point a restart resumes from"
                          if self.completed else "the newest complete checkpoint already in the run folder, "
                          "if any, stays the point a restart resumes from")
                raise CheckpointError(f"checkpoint {written} could not be uploaded to {destination} after "
                                      f"{UPLOAD_ATTEMPTS} tries ({first_line(error)}); {resume}") from None
            if not keep_local:
                shutil.rmtree(local_directory, ignore_errors=True)
            self.completed = written
            on_done(written)
            return destination

        future = self._pool.submit(work)
        self._futures.append(future)
        return future

    def close(self) -> None:
        """Wait for every queued upload to finish (raises the first upload error)."""
        self._pool.shutdown(wait=True)
        for future in self._futures:
            future.result()
