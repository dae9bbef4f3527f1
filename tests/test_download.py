"""``cnl data get`` against a real HTTP server on 127.0.0.1 that serves miniature archives
with the official file names and inner layouts: full downloads, a broken connection, a
wrong checksum, a 404, a full disk, a second call, Ctrl-C."""

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archives import serve
from cnl.cli import main
from cnl.data import build_dataset
from cnl.data import download as download_module
from cnl.data.check import compare_official
from cnl.data.download import ChecksumError, get_dataset

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


SPLITS = {
    "cub": {"train": 6, "test": 3},
    "dogs": {"train": 6, "test": 3},
    "aircraft": {"train": 6, "val": 3, "test": 3},
    "flowers102": {"train": 3, "val": 3, "test": 6},
    "cars": {"train": 6, "test": 3},
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_a_full_download_unpacks_into_the_layout_build_dataset_reads(name, server, tmp_path, monkeypatch, capsys):
    serve(server, name, tmp_path / "served", monkeypatch)
    root = tmp_path / "data"
    assert main(["data", "get", name, "--root", str(root), "--mirror", server.url]) == 0
    out = capsys.readouterr().out
    source = download_module.SOURCES[name]
    folder = root / source.folder
    assert f"--dataset {source.dataset} --data-root {folder}" in out and "differs from the official splits" in out
    sizes = {split: len(build_dataset(source.dataset, folder, split)) for split in SPLITS[name]}
    assert sizes == SPLITS[name]
    assert sorted(server.fetched()) == sorted(server.files)
    # A second call finds everything verified and unpacked: no request, the same answer.
    server.requests.clear()
    assert main(["data", "get", name, "--root", str(root), "--mirror", server.url]) == 0
    assert "downloaded nothing: every file was there and verified" in capsys.readouterr().out
    assert server.requests == []


def test_the_official_sizes_are_the_published_ones(monkeypatch):
    from cnl.data import check

    expected = {
        "cub": ({"train": 5994, "test": 5794}, 200), "dogs": ({"train": 12000, "test": 8580}, 120),
        "cars": ({"train": 8144, "test": 8041}, 196), "flowers102": ({"train": 1020, "val": 1020, "test": 6149}, 102),
    }  # fmt: skip
    for name, (sizes, classes) in expected.items():
        assert check.OFFICIAL[name] == (sizes, classes)
    aircraft, classes = check.OFFICIAL["aircraft"]
    assert (aircraft["train_without_val"], aircraft["val"], aircraft["test"], classes) == (3334, 3333, 3333, 100)
    monkeypatch.setitem(check.OFFICIAL, "toy", ({"train": 2, "test": 1}, 2))
    report = check.SplitReport("train", 2, ["a", "b"], check.Counter({0: 1, 1: 1}))
    test = check.SplitReport("test", 1, ["a", "b"], check.Counter({0: 1}))
    assert compare_official("toy", [report, test]) == [
        "matches the official splits (train 2, test 1 images; 2 classes)"
    ]
    report.missing, report.missing_per_class = ["x.jpg"], check.Counter({"b": 1})
    assert compare_official("toy", [report, test]) == [
        "differs from the official splits:",
        "  train: 1 images, 1 fewer than the official 2 (missing per class: b 1)",
    ]


def test_a_broken_connection_continues_where_it_stopped(server, tmp_path, monkeypatch, capsys):
    serve(server, "cub", tmp_path / "served", monkeypatch)
    archive = server.files["CUB_200_2011.tgz"]
    server.drop["CUB_200_2011.tgz"] = len(archive) // 2
    root = tmp_path / "data"
    assert main(["data", "get", "cub", "--root", str(root), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert f"ended at byte {len(archive) // 2:,} of {len(archive):,}; run the same command again" in err
    part = root / "downloads" / "CUB_200_2011.tgz.part"
    assert part.stat().st_size == len(archive) // 2
    fetcher = get_dataset("cub", root, server.url, progress=False)
    assert server.requests[-1] == ("CUB_200_2011.tgz", f"bytes={len(archive) // 2}-")
    assert (root / "downloads" / "CUB_200_2011.tgz").read_bytes() == archive and not part.exists()
    assert len(build_dataset("cub", fetcher.folder, "train")) == 6


def test_a_wrong_checksum_names_both_digests_and_keeps_the_file(server, tmp_path, monkeypatch):
    serve(server, "cub", tmp_path / "served", monkeypatch)
    source = download_module.SOURCES["cub"]
    wrong = dataclasses.replace(source.archives[0], digest="0" * 32)
    monkeypatch.setitem(download_module.SOURCES, "cub", dataclasses.replace(source, archives=(wrong,)))
    root = tmp_path / "data"
    actual = hashlib.md5(server.files["CUB_200_2011.tgz"]).hexdigest()
    with pytest.raises(ChecksumError, match=f"md5 {actual} .*expected {'0' * 32}.*Kept as .*mismatch"):
        get_dataset("cub", root, server.url, progress=False)
    assert (root / "downloads" / "CUB_200_2011.tgz.mismatch").read_bytes() == server.files["CUB_200_2011.tgz"]
    assert not (root / "CUB_200_2011").exists()  # nothing unpacked


def test_a_404_names_the_url_the_page_and_the_folder(server, tmp_path, monkeypatch, capsys):
    serve(server, "dogs", tmp_path / "served", monkeypatch)
    del server.files["lists.tar"]
    root = tmp_path / "data"
    assert main(["data", "get", "dogs", "--root", str(root), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert f"cannot download {server.url}/lists.tar: HTTP 404" in err
    assert "http://vision.stanford.edu/aditya86/ImageNetDogs/" in err and f"put it in {root / 'downloads'}/" in err
    assert (root / "downloads" / "images.tar.verified").exists()  # what was verified stays


def test_datasets_no_host_serves_say_what_to_do(tmp_path, capsys):
    assert main(["data", "get", "cars", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "original host is gone" in err and "--mirror URL" in err and "stanford-cars-dataset" in err
    assert main(["data", "get", "nabirds", "--root", str(tmp_path)]) == 2
    assert "https://dl.allaboutbirds.org/nabirds" in capsys.readouterr().err
    assert not (tmp_path / "downloads").exists()


def child(root: Path, url: str, archive: bytes, site: Path, limit: int | None = None) -> subprocess.Popen:
    """``cnl data get aircraft`` in another process that knows the served archive's digest,
    its file size limited to ``limit`` bytes."""
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import dataclasses\nfrom cnl.data import download as d\n"
        f"a = dataclasses.replace(d.SOURCES['aircraft'].archives[0], digest={hashlib.sha256(archive).hexdigest()!r}, "
        f"size={len(archive)})\n"
        "d.SOURCES['aircraft'] = dataclasses.replace(d.SOURCES['aircraft'], archives=(a,))\n"
    )
    # Ctrl-C raises KeyboardInterrupt, as in a terminal: a process that a non-interactive
    # shell started in the background (CI) inherits SIGINT ignored.
    limited = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + (
        "import resource; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        if limit
        else ""
    )
    args = ["data", "get", "aircraft", "--root", str(root), "--mirror", url]
    code = f"{limited}from cnl.cli import main; raise SystemExit(main({args!r}))"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_a_full_disk_loses_nothing_verified_and_the_next_call_finishes(server, tmp_path, monkeypatch):
    serve(server, "cub", tmp_path / "served", monkeypatch)
    serve(server, "aircraft", tmp_path / "served", monkeypatch, padding=200_000)
    root = tmp_path / "data"
    get_dataset("cub", root, server.url, progress=False)
    archive = server.files["fgvc-aircraft-2013b.tar.gz"]
    process = child(root, server.url, archive, tmp_path / "site", limit=len(archive) // 3)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    assert "fgvc-aircraft-2013b.tar.gz.part failed: File too large" in err and "run the same command again" in err
    kept = (root / "downloads" / "fgvc-aircraft-2013b.tar.gz.part").stat().st_size
    assert 0 < kept <= len(archive) // 3
    server.requests.clear()
    get_dataset("cub", root, server.url, progress=False)  # verified before the full disk: nothing fetched
    assert server.requests == []
    fetcher = get_dataset("aircraft", root, server.url, progress=False)
    assert server.requests == [("fgvc-aircraft-2013b.tar.gz", f"bytes={kept}-")]
    assert (root / "downloads" / "fgvc-aircraft-2013b.tar.gz").read_bytes() == archive
    assert len(build_dataset("aircraft", fetcher.folder, "test")) == 3


def test_ctrl_c_mid_download_then_a_clean_resume(server, tmp_path, monkeypatch):
    serve(server, "aircraft", tmp_path / "served", monkeypatch, padding=120_000)
    server.slow.add("fgvc-aircraft-2013b.tar.gz")
    archive = server.files["fgvc-aircraft-2013b.tar.gz"]
    root = tmp_path / "data"
    part = root / "downloads" / "fgvc-aircraft-2013b.tar.gz.part"
    process = child(root, server.url, archive, tmp_path / "site")
    deadline = time.time() + 120
    while not (part.exists() and part.stat().st_size > 4096):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    kept = part.stat().st_size
    assert 4096 < kept < len(archive)
    server.slow.clear()
    fetcher = get_dataset("aircraft", root, server.url, progress=False)
    assert server.requests[-1] == ("fgvc-aircraft-2013b.tar.gz", f"bytes={kept}-")
    assert (root / "downloads" / "fgvc-aircraft-2013b.tar.gz").read_bytes() == archive
    assert len(build_dataset("aircraft", fetcher.folder, "val")) == 3


def test_without_a_published_digest_the_first_download_records_one(server, tmp_path, monkeypatch):
    serve(server, "flowers102", tmp_path / "served", monkeypatch)
    source = download_module.SOURCES["flowers102"]
    unpinned = tuple(dataclasses.replace(a, digest=None, size=None) for a in source.archives)
    monkeypatch.setitem(download_module.SOURCES, "flowers102", dataclasses.replace(source, archives=unpinned))
    root = tmp_path / "data"
    get_dataset("flowers102", root, server.url, progress=False)
    recorded = root / "downloads" / "setid.mat.recorded"
    assert recorded.read_text().strip() == hashlib.sha256(server.files["setid.mat"]).hexdigest()
    # A later copy that differs from the first is refused like any mismatch.
    for name in ("setid.mat", "setid.mat.verified", "setid.mat.unpacked"):
        (root / "downloads" / name).unlink()
    server.files["setid.mat"] = server.files["setid.mat"] + b"changed"
    with pytest.raises(ChecksumError, match="setid.mat .*is not the copy recorded on first download"):
        get_dataset("flowers102", root, server.url, progress=False)


# --- a server that does not answer, crawls, or sends too much ----------------------------------


def test_a_mirror_that_never_answers_is_given_up_in_one_line(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setattr(download_module, "TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the connection is accepted by the kernel; nothing is ever sent back
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        assert main(["data", "get", "dogs", "--root", str(tmp_path / "data"), "--mirror", url]) == 2
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    err = capsys.readouterr().err
    said = f"{url}/images.tar did not answer (nothing for 0.5 s); run the same command again, or give --mirror URL"
    assert err == f"cnl data: error: {said}\n"


def test_a_transfer_below_the_minimum_rate_is_given_up_and_kept(server, tmp_path, monkeypatch, capsys):
    serve(server, "dogs", tmp_path / "served", monkeypatch)
    server.trickle.add("images.tar")  # 5 bytes a second, each within the read time-out
    monkeypatch.setattr(download_module, "STALL_WINDOW_S", 1.0)
    monkeypatch.setattr(download_module, "MIN_RATE", 100)
    root = tmp_path / "data"
    assert main(["data", "get", "dogs", "--root", str(root), "--mirror", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert "images.tar sent" in err and "bytes in the last 1 s (below 100 bytes/s): given up at byte" in err
    assert len(err.splitlines()) == 1 and (root / "downloads" / "images.tar.part").stat().st_size > 0


def test_more_than_the_published_size_is_refused(server, tmp_path, monkeypatch, capsys):
    serve(server, "dogs", tmp_path / "served", monkeypatch)
    size = len(server.files["images.tar"])
    server.claimed["images.tar"] = 10 * 2**30  # a declared 10 GB
    root = tmp_path / "data"
    assert main(["data", "get", "dogs", "--root", str(root), "--mirror", server.url]) == 2
    assert f"declares 10,737,418,240 bytes, but the published file has {size:,}: refusing it" in capsys.readouterr().err
    assert not (root / "downloads" / "images.tar.part").exists()
    del server.claimed["images.tar"]
    server.files["images.tar"] += b"x" * 5000  # and a stream that does not say how long it is
    server.unsized.add("images.tar")
    assert main(["data", "get", "dogs", "--root", str(root), "--mirror", server.url]) == 2
    assert f"sent more than the published {size:,} bytes: stopped there" in capsys.readouterr().err
    assert (root / "downloads" / "images.tar.part").stat().st_size == size


def test_a_part_file_that_cannot_be_written_is_named(server, tmp_path, monkeypatch, capsys):
    serve(server, "dogs", tmp_path / "served", monkeypatch)
    root = tmp_path / "data"
    (root / "downloads" / "images.tar.part").mkdir(parents=True)  # in the way of the file, for root too
    assert main(["data", "get", "dogs", "--root", str(root), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert "images.tar.part" in err and "No such file" not in err and len(err.strip().splitlines()) == 1
