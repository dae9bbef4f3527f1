"""A real HTTP server on 127.0.0.1 and miniature archives with the official file names and
inner layouts: what ``cnl data get`` (and ``cnl demo --dataset``) fetch in the tests."""

import dataclasses
import hashlib
import io
import os
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cnl.data import download as download_module
from layouts import write_aircraft, write_cars_devkit, write_cub, write_dogs, write_flowers


class Server:
    """Files by name, with HTTP Range; ``drop[name] = n`` ends that file's next response
    after n bytes; names in ``slow`` trickle out; every request is logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.slow: set[str] = set()
        self.trickle: set[str] = set()  # one byte every 0.2 s
        self.unsized: set[str] = set()  # no Content-Length
        self.claimed: dict[str, int] = {}  # a Content-Length other than the file's
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if name not in server.unsized:
                    self.send_header("Content-Length", str(server.claimed.get(name, len(data) - start)))
                self.end_headers()
                body = data[start:]
                if name in server.trickle:
                    for offset in range(len(body)):
                        self.wfile.write(body[offset : offset + 1])
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                cut = server.drop.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.close_connection = True
                    return
                step = 512 if name in server.slow else len(body)
                for offset in range(0, len(body), step):
                    self.wfile.write(body[offset : offset + step])
                    if name in server.slow:
                        self.wfile.flush()
                        time.sleep(0.02)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def fetched(self) -> list[str]:
        return [name for name, _ in self.requests]


def tar_of(members: dict[str, Path], gz: bool, padding: int = 0) -> bytes:
    """A tar (gzip-compressed when ``gz``) of folders or files under the given names."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name)
        if padding:  # bytes that take a while to trickle out (the Ctrl-C test)
            info = tarfile.TarInfo("padding.bin")
            info.size = padding
            tar.addfile(info, io.BytesIO(os.urandom(padding)))
    return buffer.getvalue()


def miniature(name: str, work: Path, padding: int = 0) -> dict[str, bytes]:
    """Each archive of ``name`` by its official file name, holding a miniature dataset laid out as the real one."""
    if name == "cub":
        return {"CUB_200_2011.tgz": tar_of({"CUB_200_2011": write_cub(work / "CUB_200_2011")}, gz=True)}
    if name == "dogs":
        root = write_dogs(work / "dogs")
        lists = {p.name: p for p in sorted((root / "lists").iterdir())}
        return {"images.tar": tar_of({"Images": root / "Images"}, gz=False), "lists.tar": tar_of(lists, gz=False)}
    if name == "aircraft":
        root = write_aircraft(work / "fgvc-aircraft-2013b")
        return {"fgvc-aircraft-2013b.tar.gz": tar_of({"fgvc-aircraft-2013b": root}, gz=True, padding=padding)}
    if name == "flowers102":
        root = write_flowers(work / "flowers")
        return {
            "102flowers.tgz": tar_of({"jpg": root / "jpg"}, gz=True),
            "imagelabels.mat": (root / "imagelabels.mat").read_bytes(),
            "setid.mat": (root / "setid.mat").read_bytes(),
        }
    assert name == "cars"
    root = write_cars_devkit(work / "cars")
    labels = root / "devkit" / "cars_test_annos_withlabels.mat"
    served = {"cars_test_annos_withlabels.mat": labels.read_bytes()}
    labels.unlink()
    served.update(
        {
            "cars_train.tgz": tar_of({"cars_train": root / "cars_train"}, gz=True),
            "cars_test.tgz": tar_of({"cars_test": root / "cars_test"}, gz=True),
            "car_devkit.tgz": tar_of({"devkit": root / "devkit"}, gz=True),
        }
    )
    return served


def serve(server: Server, name: str, work: Path, monkeypatch, padding: int = 0, digest: str = "sha256") -> None:
    """The miniature archives on the server, and the source's digests and sizes made theirs."""
    files = miniature(name, work, padding)
    server.files.update(files)
    source = download_module.SOURCES[name]
    archives = tuple(
        dataclasses.replace(a, digest=hashlib.new(digest, files[a.file]).hexdigest(), size=len(files[a.file]))
        for a in source.archives
    )
    monkeypatch.setitem(download_module.SOURCES, name, dataclasses.replace(source, archives=archives))
