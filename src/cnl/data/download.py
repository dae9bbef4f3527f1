"""``cnl data get``: the paper's datasets from their publishers, resumable and checked.

Each archive goes to ``ROOT/downloads/FILE``: first as ``FILE.part``, which a broken
connection, a full disk or Ctrl-C leaves in place and the next call continues with an HTTP
Range request; then checked against a published digest (MD5 or SHA-256, and the size
where known) and only then given its name; then unpacked into the layout that
``build_dataset`` reads. A second call finds every archive verified (a stamp beside it
records the size and digest it was verified with) and every folder unpacked, and
downloads nothing.

The standard library does the work (urllib, hashlib, tarfile) with tqdm's progress bar:
neither torchvision's ``download_url`` nor pooch continues a partial download (both
start again from byte 0, the failure users of 1 GB archives on flaky links report), and
tarfile's ``"data"`` filter refuses members that would land outside the folder, which
torchvision's ``extract_archive`` does not ask for. The digests are the ones well-kept
libraries pin, cited beside each.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import lzma
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cnl.data.catalog import CATALOG, Archive
from cnl.errors import DataError, InvalidValue, UserError, excerpt

CHUNK = 1 << 20


class DownloadError(UserError, OSError):
    """A download that did not finish: the URL, what to do, and where the part is kept."""


class ChecksumError(DataError):
    """A downloaded file whose digest is not the published one (the file is kept)."""


class CannotFetch(UserError):
    """A dataset whose terms or hosting need a person: what to do instead."""


@dataclass(frozen=True)
class Source:
    """A dataset: its page, its archives, the folder under ROOT that ``build_dataset`` reads
    with layout ``dataset``, and, where no host serves it, what a person does instead."""

    name: str
    title: str
    page: str
    archives: tuple[Archive, ...]
    folder: str
    dataset: str
    manual: str | None = None


SOURCES = {
    record.name: Source(
        record.name, record.title, record.page, record.archives, record.folder, record.name, record.manual
    )
    for record in CATALOG.values()
    if record.page is not None  # fetchable, said so that the type checker sees the page
}


def digest_of(path: Path, kind: str, progress: bool = False) -> str:
    """The ``kind`` ("md5" or "sha256") hex digest of a file, read in chunks."""
    hasher = hashlib.new(kind)
    with open(path, "rb") as file, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"checking {path.name}", disable=not progress,
        leave=False,
    ) as bar:  # fmt: skip
        while chunk := file.read(CHUNK):
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher.hexdigest()


def kind_of(digest: str) -> str:
    return {32: "md5", 64: "sha256"}[len(digest)]


# A server that stops answering is given up on, never waited for: no byte for TIMEOUT_S
# (connecting included), or fewer than MIN_RATE bytes/s over a whole STALL_WINDOW_S.
TIMEOUT_S = 30.0
STALL_WINDOW_S = 60.0
MIN_RATE = 1024
NETWORK_ERRORS = (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


def check_url(url: str) -> str:
    """``url`` if it is an http(s) address cnl can fetch from, else one line saying why."""
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise InvalidValue(f"--mirror {excerpt(url)} holds spaces or control characters; give an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as error:
        raise InvalidValue(f"--mirror {excerpt(url)} is not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue(f"--mirror {excerpt(url)} is not an http(s) URL with a host, e.g. https://example.org/data")
    return url


def download(url: str, part: Path, progress: bool = True, limit: int | None = None) -> None:
    """``url`` into ``part``, continuing from its current length with a Range request. A
    server that stops answering or crawls, and a file larger than ``limit`` bytes (the
    published size), end in a DownloadError; ``part`` keeps what came."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing left to send: the part is whole
            return
        raise
    except NETWORK_ERRORS as error:
        raise DownloadError(
            f"{url} did not answer ({_why(error)}); run the same command again, or give --mirror URL"
        ) from None
    with response:
        if start and response.status != 206:  # the server ignored the range: start again
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdecimal() else None
        if limit is not None and total is not None and total > limit:
            raise DownloadError(
                f"{url} declares {total:,} bytes, but the published file has {limit:,}: refusing it "
                "(a wrong file, or a wrong mirror)"
            )
        _receive(response, url, part, start, total, limit, progress)
    if total is not None and part.stat().st_size < total:
        raise DownloadError(
            f"{url} ended at byte {part.stat().st_size:,} of {total:,}; run the same command again to continue"
        )


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return f"nothing for {TIMEOUT_S:g} s"
    return excerpt(str(error) or type(error).__name__, 80).strip("'")


def _receive(
    response: Any, url: str, part: Path, start: int, total: int | None, limit: int | None, progress: bool
) -> None:
    """The response's body appended to ``part`` (from byte ``start``), as it arrives."""
    try:
        out = open(part, "ab" if start else "wb")
    except OSError as error:
        raise DownloadError(f"cannot write {part}: {error.strerror or error}") from None
    written, window_start, window_bytes = start, time.monotonic(), 0
    with out, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=part.name[: -len(".part")], disable=not progress
    ) as bar:  # fmt: skip
        while True:
            try:
                chunk = response.read1(CHUNK)  # what has come, not a whole chunk: progress as it arrives
            except NETWORK_ERRORS as error:
                raise DownloadError(
                    f"the connection to {url} broke at byte {written:,}"
                    + (f" of {total:,}" if total else "")
                    + f" ({_why(error)}); {part} keeps what came: run the same command again to continue"
                ) from error
            if not chunk:
                return
            if limit is not None and written + len(chunk) > limit:
                out.write(chunk[: limit - written])
                raise DownloadError(
                    f"{url} sent more than the published {limit:,} bytes: stopped there; the next call checks "
                    "what came against the published digest"
                )
            try:
                out.write(chunk)
            except OSError as error:
                raise DownloadError(
                    f"writing {part} failed: {error.strerror or error}; it keeps {written:,} bytes: free some space "
                    "and run the same command again to continue"
                ) from None
            written += len(chunk)
            bar.update(len(chunk))
            window_bytes += len(chunk)
            if time.monotonic() - window_start >= STALL_WINDOW_S:
                if window_bytes < MIN_RATE * STALL_WINDOW_S:
                    raise DownloadError(
                        f"{url} sent {window_bytes:,} bytes in the last {STALL_WINDOW_S:g} s (below "
                        f"{MIN_RATE:,} bytes/s): given up at byte {written:,}; {part} keeps what came: run the same "
                        "command again to continue, or give --mirror URL"
                    )
                window_start, window_bytes = time.monotonic(), 0


class Fetcher:
    """Downloads, checks and unpacks the archives of one source into ``root``."""

    def __init__(self, source: Source, root: str | Path, mirror: str | None = None, progress: bool = True) -> None:
        self.source = source
        self.root = Path(root)
        self.mirror = check_url(mirror).rstrip("/") if mirror else None
        self.progress = progress
        self.downloads = self.root / "downloads"
        self.fetched: list[str] = []  # files downloaded by this call
        self.folder = self.root / source.folder  # what build_dataset reads

    def url_of(self, archive: Archive) -> str:
        if self.mirror:
            return f"{self.mirror}/{archive.file}"
        assert archive.url is not None
        return archive.url

    def run(self) -> Path:
        """Every archive present and verified, every folder unpacked: ``root/source.folder``."""
        if self.source.manual and not (self.mirror and self.source.archives):
            raise CannotFetch(self.source.manual.replace("ROOT", str(self.root)))
        self.downloads.mkdir(parents=True, exist_ok=True)
        for archive in self.source.archives:
            path = self.ensure(archive)
            self.unpack(archive, path)
        return self.folder

    # --- one archive ---------------------------------------------------------------------

    def ensure(self, archive: Archive) -> Path:
        """The verified archive, downloaded (or continued) when it is not there yet."""
        path = self.downloads / archive.file
        if path.exists() and self.verified(archive, path):
            return path
        part = path.with_name(path.name + ".part")
        if path.exists():  # a file put there by hand, or by an older call, that is not verified yet
            path.replace(part)
        url = self.url_of(archive)
        try:
            download(url, part, self.progress, archive.size)
        except urllib.error.HTTPError as error:
            raise DownloadError(
                f"cannot download {url}: HTTP {error.code} {error.reason}. Get {archive.file} from "
                f"{self.source.page} by hand and put it in {self.downloads}/: cnl data get checks it and goes on"
            ) from error
        except urllib.error.URLError as error:
            raise DownloadError(
                f"cannot reach {url}: {error.reason}. Get {archive.file} from {self.source.page} by hand and "
                f"put it in {self.downloads}/, or give --mirror URL"
            ) from error
        except DownloadError:
            raise
        except OSError as error:  # what urllib does not wrap (TLS, a reset while reading headers)
            kept = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"cannot download {url}: {_why(error)}; {part.name} keeps {kept:,} bytes: run the same command "
                "again to continue, or give --mirror URL"
            ) from error
        self.check(archive, part, path)
        part.replace(path)
        self.fetched.append(archive.file)
        return path

    def check(self, archive: Archive, part: Path, path: Path) -> None:
        """Size and digest against the published ones; a mismatch keeps the file aside and says both."""
        size = part.stat().st_size
        expected = archive.digest or self.recorded(path)
        kind = kind_of(expected) if expected else "sha256"
        actual = digest_of(part, kind, self.progress)
        if (expected and actual != expected) or (archive.size is not None and size != archive.size):
            kept = path.with_name(path.name + ".mismatch")
            part.replace(kept)
            which = "the published file" if archive.digest else "the copy recorded on first download"
            raise ChecksumError(
                f"{archive.file} from {self.url_of(archive)} is not {which}: {kind} {actual} "
                f"({size:,} bytes), expected {expected}"
                + (f" ({archive.size:,} bytes)" if archive.size else "")
                + f". Kept as {kept} for inspection; the next call downloads it again"
            )
        if not expected:  # no digest is published: record this one, and check later copies against it
            self.stamp(path, "recorded").write_text(f"{actual}\n")
        self.seal(path, actual, size)

    def verified(self, archive: Archive, path: Path) -> bool:
        """Whether ``path`` was verified as it is now (same size), else check it again. A file
        of another size than the published one is never verified, whatever a stamp says."""
        expected = archive.digest or self.recorded(path)
        if not expected or (archive.size is not None and path.stat().st_size != archive.size):
            return False
        if self.sealed(path) == {"size": path.stat().st_size, "digest": expected}:
            return True
        if digest_of(path, kind_of(expected), self.progress) == expected:
            self.seal(path, expected, path.stat().st_size)
            return True
        return False

    def seal(self, path: Path, digest: str, size: int) -> None:
        """Record that ``path``, of ``size`` bytes, was verified against ``digest``."""
        self.stamp(path, "verified").write_text(json.dumps({"size": size, "digest": digest}) + "\n")

    def sealed(self, path: Path) -> dict | None:
        """What ``path`` was last verified as (size and digest), if it was: a stamp that is not
        one we wrote counts as none (the file is checked again)."""
        try:
            seal = json.loads(self.stamp(path, "verified").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return seal if isinstance(seal, dict) and set(seal) == {"size", "digest"} else None

    def recorded(self, path: Path) -> str | None:
        """The digest recorded on first download (where none is published), if it is one."""
        try:
            digest = self.stamp(path, "recorded").read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            return None
        return digest if len(digest) in (32, 64) and all(c in "0123456789abcdef" for c in digest) else None

    @staticmethod
    def stamp(path: Path, what: str) -> Path:
        return path.with_name(f"{path.name}.{what}")

    def unpack(self, archive: Archive, path: Path) -> None:
        """Into ``root/archive.into``, once per verified archive (a marker records it). The
        archive is unpacked into a temporary folder beside it, which is moved into place only
        once whole: a refused member, a damaged archive or a full disk leaves nothing behind."""
        target = self.root / archive.into
        marker = self.stamp(path, "unpacked")
        sealed = self.sealed(path)
        assert sealed is not None  # unpack follows ensure, which seals
        digest = sealed["digest"]
        if marker.exists() and marker.read_text().strip() == digest:
            return
        staging = self.root / f".{archive.file}.unpacking"
        shutil.rmtree(staging, ignore_errors=True)  # of a call that was killed while unpacking
        staging.mkdir(parents=True)
        try:
            extract(path, staging, archive.file)
            merge(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        marker.write_text(digest + "\n")


def extract(path: Path, into: Path, name: str) -> None:
    """``path`` (a tar or zip archive, or a plain file) unpacked into ``into``. tarfile's
    "data" filter refuses members that would leave the folder (``../``, absolute paths and
    links), links out of it, and devices; each is one DataError naming the member."""
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                tar.extractall(into, filter="data")
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zipped:
                zipped.extractall(into)  # names are made relative and stripped of ..: members stay inside
        else:
            shutil.copyfile(path, into / name)
    except tarfile.FilterError as error:
        member = error.tarinfo.name if error.tarinfo is not None else "?"
        raise DataError(
            f"{path}: refusing member {excerpt(member)}: {type(error).__name__} (it would reach outside the "
            "folder, or is a device); nothing was unpacked"
        ) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, KeyError, OSError) as error:
        # KeyError: tarfile's for a link to a member the archive does not hold; OSError: a member
        # that collides with another (a file where a folder is), or a disk that is full
        raise DataError(f"{path} cannot be unpacked ({excerpt(str(error), 80)}); nothing was unpacked") from None


def merge(source: Path, target: Path) -> None:
    """Move everything in ``source`` into ``target`` (renames; folders merged, files replaced)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink() and destination.is_dir() and not destination.is_symlink():
            merge(entry, destination)
            continue
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)


def get_dataset(name: str, root: str | Path, mirror: str | None = None, progress: bool = True) -> Fetcher:
    """Fetch dataset ``name`` into ``root``; the fetcher says what it downloaded and where the data is."""
    if name not in SOURCES:
        raise InvalidValue(f"unknown dataset {name!r}; cnl data get knows: {', '.join(SOURCES)}")
    fetcher = Fetcher(SOURCES[name], root, mirror, progress)
    fetcher.run()
    return fetcher
