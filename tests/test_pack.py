"""models.pack: decoding quirks and faults, source layouts, the packed file's
contents against naive references, checksums, and resuming after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from models import pack as mp
from models.data import DataError
from models.imagenet_tree import make_tree, synthetic_image, write_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 48


def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "models.pack", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """20 classes, 3 training and 1 validation image each, with every quirk."""
    return make_tree(str(tmp_path_factory.mktemp("tree")), classes=20, train_per_class=3,
                     val_per_class=1, around=(120, 90), seed=3)


@pytest.fixture(scope="module")
def packed(tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packs") / "p")
    summary = mp.pack(tree.root, out, size=SIZE, workers=1, progress=False, chunk=7)
    return out, summary


# -- decoding ---------------------------------------------------------------


def test_decode_scales_the_shorter_side_and_keeps_the_central_square(tmp_path):
    # 300x200 landscape: a red band in the 50 columns on each side, a green
    # central 200x200 square with a blue 40x40 patch at its top-left corner.
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[:, :50] = rgb[:, 250:] = (255, 0, 0)
    rgb[:, 50:250] = (0, 255, 0)
    rgb[:40, 50:90] = (0, 0, 255)
    path = str(tmp_path / "a.png")
    Image.fromarray(rgb).save(path)
    out = mp.decode(path, 20)  # scale 1/10: the patch becomes 4x4 at the top-left
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert (out[:, 1:-1, 0] == 0).all(), "the side bands must be cropped away"
    assert (out[:3, 1:3] == (0, 0, 255)).all()
    assert (out[5:, 5:-1] == (0, 255, 0)).all()
    # the same as scaling the whole picture and cropping (the edge columns
    # then also see a little of the band beyond them)
    whole = np.asarray(Image.fromarray(rgb).resize((30, 20), Image.Resampling.BILINEAR))
    assert np.abs(out.astype(int) - whole[:, 5:25]).max() <= 1
    # portrait: the same picture turned, cropped top and bottom instead
    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 0, 2))).save(path)
    assert (mp.decode(path, 20) == out.transpose(1, 0, 2)).all()


def reference(rgb, size):
    return mp.decode_array(rgb, size)


def test_quirks_decode_like_the_plain_image(tree, tmp_path):
    q = tree.quirks
    assert set(q) == {"grey", "cmyk", "png_as_jpeg", "exif_rotated", "png16"}
    for kind in q:
        out = mp.decode(q[kind], SIZE)
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8, kind
    rgb = synthetic_image(0, 0, 160, 120, seed=9)
    rgb[:, :80] //= 4  # dark left half: a rotation shows
    plain = str(tmp_path / "plain.JPEG")
    write_image(plain, rgb)
    want = mp.decode(plain, SIZE).astype(int)
    for kind in ("cmyk", "exif_rotated"):
        path = str(tmp_path / f"{kind}.JPEG")
        write_image(path, rgb, kind)
        got = mp.decode(path, SIZE).astype(int)
        assert np.abs(got - want).mean() < 4, kind
    # without honouring EXIF the picture would be turned: far from the plain one
    with Image.open(str(tmp_path / "exif_rotated.JPEG")) as im:
        raw = np.asarray(im.convert("RGB").resize((SIZE, SIZE)), dtype=int)
    assert np.abs(raw - want).mean() > 15
    path = str(tmp_path / "png.JPEG")
    write_image(path, rgb, "png_as_jpeg")
    with Image.open(path) as im:
        assert im.format == "PNG"
    assert (mp.decode(path, SIZE) == reference(rgb, SIZE)).all()  # lossless: exact
    path = str(tmp_path / "grey.JPEG")
    write_image(path, rgb, "grey")
    got = mp.decode(path, SIZE).astype(int)
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    luma = np.asarray(Image.fromarray(reference(rgb, SIZE)).convert("L"), dtype=int)
    assert np.abs(got[..., 0] - luma).mean() < 4


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    grey8 = np.tile(np.arange(0, 250, 5, dtype=np.uint16), (50, 1))  # 50x50 ramp
    wide = grey8 * 257 + 100  # 16-bit, low byte noise-free offset
    path = str(tmp_path / "w.png")
    Image.fromarray(wide).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    out = mp.decode(path, 50)
    assert (out[..., 0] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - grey8).max() <= 1


@pytest.mark.parametrize("fault", ["zero", "truncated", "garbage"])
def test_bad_file_is_one_line_naming_it(tmp_path, fault):
    tree = make_tree(str(tmp_path / "t"), classes=3, train_per_class=2, val_per_class=1,
                     around=(64, 48), quirks=False, faults=[fault])
    bad = tree.faults[fault]
    with pytest.raises(mp.PackError) as err:
        mp.decode(bad, 32)
    assert bad in str(err.value) and "\n" not in str(err.value)
    if fault == "zero":
        assert "empty" in str(err.value)
    with pytest.raises(mp.PackError, match=bad):
        mp.pack(tree.root, str(tmp_path / "p"), size=32, workers=1, progress=False)
    if fault == "truncated":  # raised in a worker process, re-raised here
        with pytest.raises(mp.PackError, match=bad):
            mp.pack(tree.root, str(tmp_path / "p2"), size=32, workers=2, progress=False, chunk=2)
    r = run_cli(tree.root, "--out", str(tmp_path / "q"), "--size", "32", "--workers", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and bad in r.stderr
    assert "Traceback" not in r.stderr


def test_skip_bad_counts_and_packs_the_rest(tmp_path):
    tree = make_tree(str(tmp_path / "t"), classes=5, train_per_class=3, val_per_class=1,
                     around=(64, 48), quirks=False, faults=["zero", "truncated", "garbage"])
    out = str(tmp_path / "p")
    r = run_cli(tree.root, "--out", out, "--size", "32", "--workers", "1", "--skip-bad",
                "--chunk", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "3 unreadable file(s) skipped" in r.stdout
    p = mp.open_pack(out)
    assert len(p.split("train")) == 15 - 3 and len(p.skipped) == 3
    assert all(any(path in s for s in p.skipped) for path in tree.faults.values())
    # every packed image is one of the good files, with its label, each once
    good = {path: lab for path, lab in tree.train if path not in tree.faults.values()}
    decoded = {path: mp.decode(path, 32) for path in good}
    seen = set()
    tr = p.split("train")
    for img, lab in zip(tr.images, tr.labels):
        match = [path for path, d in decoded.items() if (d == img).all()]
        assert len(match) == 1 and good[match[0]] == lab
        seen.add(match[0])
    assert seen == set(good)
    mean = np.mean([decoded[path] for path in good], axis=0, dtype=np.float64)
    np.testing.assert_allclose(p.mean_image, mean, rtol=1e-6, atol=1e-4)


# -- layouts ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["ilsvrc-flat", "ilsvrc-folders", "folders"])
def test_layouts_give_the_right_labels(tmp_path, layout):
    tree = make_tree(str(tmp_path / "t"), classes=4, train_per_class=2, val_per_class=2,
                     around=(40, 30), quirks=False, layout=layout)
    found = mp.scan(tree.root)
    assert found["class_names"] == tree.class_names
    assert sorted(found["train"]) == sorted(tree.train)
    assert sorted(found["val"]) == sorted(tree.val)


def test_kaggle_layout_finds_the_csv_three_levels_up(tmp_path):
    tree = make_tree(str(tmp_path / "ILSVRC" / "Data" / "CLS-LOC"), classes=3,
                     train_per_class=1, val_per_class=2, around=(40, 30), quirks=False)
    os.replace(os.path.join(tree.root, "LOC_val_solution.csv"),
               str(tmp_path / "LOC_val_solution.csv"))
    assert sorted(mp.scan(tree.root)["val"]) == sorted(tree.val)


def test_layout_errors(tmp_path):
    tree = make_tree(str(tmp_path / "t"), classes=2, train_per_class=1, val_per_class=1,
                     around=(40, 30), quirks=False)
    csv_path = os.path.join(tree.root, "LOC_val_solution.csv")
    text = open(csv_path).read()
    open(csv_path, "w").write(text.replace(tree.class_names[1], "n99999999"))
    with pytest.raises(mp.PackError, match="n99999999"):
        mp.scan(tree.root)
    os.remove(csv_path)
    with pytest.raises(mp.PackError, match="LOC_val_solution.csv"):
        mp.scan(tree.root)
    with pytest.raises(mp.PackError, match="no train/"):
        mp.scan(str(tmp_path))
    with pytest.raises(mp.PackError, match="not a directory"):
        mp.scan(str(tmp_path / "nowhere"))
    assert issubclass(mp.PackError, DataError)


# -- the packed file ------------------------------------------------------------


def test_pack_holds_decoded_images_labels_mean_and_colour_pca(tree, packed):
    out, summary = packed
    assert summary["train"] == 60 and summary["val"] == 20 and summary["classes"] == 20
    p = mp.open_pack(out)
    assert p.class_names == tree.class_names and p.size == SIZE
    train = sorted(tree.train)  # the pack's order: class folders, then file names
    tr = p.split("train")
    assert isinstance(tr.images, np.memmap) and tr.images.shape == (60, SIZE, SIZE, 3)
    assert tr.labels.dtype == np.int64 and list(tr.labels) == [lab for _, lab in train]
    ref = np.stack([mp.decode(path, SIZE) for path, _ in train])
    assert (np.asarray(tr.images) == ref).all()
    va = p.split("val")
    assert sorted(zip(va.labels, [bytes(i) for i in va.images])) == sorted(
        (lab, bytes(mp.decode(path, SIZE))) for path, lab in tree.val)
    # mean image and the RGB covariance's eigen-decomposition, naively
    np.testing.assert_allclose(p.mean_image, ref.astype(np.float64).mean(axis=0), rtol=1e-6,
                               atol=1e-4)
    pixels = ref.reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels, rowvar=False, bias=True)
    assert (np.diff(p.eigval) <= 0).all()
    for i in range(3):
        np.testing.assert_allclose(cov @ p.eigvec[:, i], p.eigval[i] * p.eigvec[:, i],
                                   rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(p.eigvec.T @ p.eigvec, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(p.eigval.sum(), np.trace(cov), rtol=1e-5)
    with pytest.raises(mp.PackError, match="no split"):
        p.split("test")


def test_workers_give_the_same_pack(tree, packed, tmp_path):
    out, _ = packed
    other = str(tmp_path / "w2")
    mp.pack(tree.root, other, size=SIZE, workers=2, progress=False, chunk=7)
    for name in ("train.u8", "val.u8"):
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(other, name), "rb").read()
    a, b = mp.open_pack(out), mp.open_pack(other)
    assert (a.mean_image == b.mean_image).all() and (a.eigvec == b.eigvec).all()


def test_the_command_with_worker_processes_packs_the_same_without_warnings(tree, packed, tmp_path):
    """``python -m models.pack`` with two decoding processes: the same bytes as one
    process, and the workers do not run the command's module again as their main
    (Python's "found in sys.modules ... unpredictable behaviour" warning)."""
    out = str(tmp_path / "cli2")
    r = run_cli(tree.root, "--out", out, "--size", str(SIZE), "--workers", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "sys.modules" not in r.stderr, r.stderr
    for name in ("train.u8", "val.u8"):
        assert open(os.path.join(packed[0], name), "rb").read() == open(os.path.join(out, name), "rb").read()


def test_a_finished_pack_is_not_redone_and_another_is_refused(tree, packed, tmp_path):
    out, _ = packed
    again = mp.pack(tree.root, out, size=SIZE, workers=1, progress=False)
    assert again["packed"] == 0 and again["train"] == 60
    with pytest.raises(mp.PackError, match="size 48"):
        mp.pack(tree.root, out, size=SIZE + 8, workers=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(mp.PackError, match="in the way"):
        mp.pack(tree.root, str(tmp_path / "other"), size=SIZE, workers=1, progress=False)


def copy_pack(src, dst):
    import shutil
    shutil.copytree(src, dst)
    # without its stamp: the copy's first opening hashes everything, whatever the clock did
    os.remove(os.path.join(dst, mp.STAMP))
    return str(dst)


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_corrupted_pack_is_refused(packed, tmp_path):
    out = copy_pack(packed[0], tmp_path / "c")
    with open(os.path.join(out, "val.u8"), "r+b") as f:
        f.seek(3 * SIZE * SIZE * 3 + 77)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(mp.PackError, match=r"val.u8 images 0\.\.6 fail their checksum"):
        mp.open_pack(out)
    mp.open_pack(out, verify="quick")  # the data's checksums are what was skipped
    with open(os.path.join(out, "meta.npz"), "r+b") as f:
        f.seek(200)
        f.write(b"\xa5\x5a\xa5")
    with pytest.raises(mp.PackError, match="meta.npz fails its checksum"):
        mp.open_pack(out, verify="quick")
    with open(os.path.join(out, "meta.npz"), "wb") as f:
        f.write(open(os.path.join(packed[0], "meta.npz"), "rb").read())
    os.truncate(os.path.join(out, "train.u8"), 1000)
    with pytest.raises(mp.PackError, match="train.u8 holds 1,000 bytes"):
        mp.open_pack(out, verify=False)
    os.remove(os.path.join(out, "manifest.json"))
    with pytest.raises(mp.PackError, match="not a pack"):
        mp.open_pack(out)
    with pytest.raises(mp.PackError, match="no such pack"):
        mp.open_pack(str(tmp_path / "absent"))


def test_fault_stops_packing_and_the_rerun_keeps_the_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(mp, "STATS_EVERY_S", 0.0)  # save the running sums after every chunk
    tree = make_tree(str(tmp_path / "t"), classes=4, train_per_class=3, val_per_class=1,
                     around=(64, 48), quirks=False, faults=["truncated"])
    bad = tree.faults["truncated"]
    # move the bad file to the end of the order, so chunks before it finish
    os.replace(bad, os.path.join(os.path.dirname(tree.train[-1][0]), "zzz.JPEG"))
    out = str(tmp_path / "p")
    with pytest.raises(mp.PackError, match="zzz.JPEG"):
        mp.pack(tree.root, out, size=32, workers=1, progress=False, chunk=3)
    with pytest.raises(mp.PackError, match="unfinished pack"):
        mp.open_pack(out)
    resumed = mp.pack(tree.root, out, size=32, workers=1, progress=False, chunk=3,
                      skip_bad=True)
    assert resumed["chunks_done_before"] == 3 and resumed["skipped"] == 1
    fresh = mp.pack(tree.root, str(tmp_path / "f"), size=32, workers=1, progress=False,
                    chunk=3, skip_bad=True)
    assert fresh["chunks_done_before"] == 0
    a, b = mp.open_pack(out), mp.open_pack(str(tmp_path / "f"))
    assert (np.asarray(a.split("train").images) == np.asarray(b.split("train").images)).all()
    assert (a.mean_image == b.mean_image).all() and (a.eigval == b.eigval).all()


def test_kill_9_mid_pack_then_rerun_finishes_the_same_pack(tmp_path):
    tree = make_tree(str(tmp_path / "t"), classes=20, train_per_class=4, val_per_class=2,
                     around=(200, 150), seed=5)
    out = str(tmp_path / "p")
    cmd = [sys.executable, "-m", "models.pack", tree.root, "--out", out, "--size", "32",
           "--workers", "1", "--chunk", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = os.path.join(out, "journal.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(journal) and open(journal, "rb").read().count(b"\n") >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "manifest.json")), "killed too late"
    with pytest.raises(mp.PackError, match="unfinished pack"):
        mp.open_pack(out)
    done = open(journal, "rb").read().count(b"\n")
    with open(journal, "ab") as f:
        f.write(b'{"split": "train", "chu')  # a line torn by the kill is ignored
    r = run_cli(*cmd[3:])
    assert r.returncode == 0, r.stderr
    assert f"continued an unfinished pack ({done} chunks were done)" in r.stdout
    p = mp.open_pack(out)
    ref = mp.pack(tree.root, str(tmp_path / "ref"), size=32, workers=1, progress=False, chunk=1)
    assert ref["chunks_done_before"] == 0 and done >= 3
    q = mp.open_pack(str(tmp_path / "ref"))
    for s in ("train", "val"):
        assert (np.asarray(p.split(s).images) == np.asarray(q.split(s).images)).all()
        assert (p.split(s).labels == q.split(s).labels).all()
    assert (p.mean_image == q.mean_image).all() and (p.eigvec == q.eigvec).all()
    assert sorted(os.listdir(out)) == ["manifest.json", "meta.npz", "train.u8", "val.u8",
                                       "verified.json"]


def test_a_damaged_unfinished_pack_is_refused(tmp_path):
    tree = make_tree(str(tmp_path / "t"), classes=2, train_per_class=2, val_per_class=1,
                     around=(40, 30), quirks=False, faults=["zero"])
    out = str(tmp_path / "p")
    with pytest.raises(mp.PackError, match="empty"):  # stops: an unfinished pack
        mp.pack(tree.root, out, size=32, workers=1, progress=False)
    os.remove(os.path.join(out, "val.u8"))
    r = run_cli(tree.root, "--out", out, "--size", "32", "--workers", "1", "--skip-bad")
    assert r.returncode == 2 and "val.u8 is missing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli(str(tmp_path / "nowhere"), "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not a directory" in r.stderr
    r = run_cli(str(tmp_path), "--out", str(tmp_path / "p"), "--size", "abc")
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    assert len(r.stderr.strip().splitlines()) == 1
    tree = make_tree(str(tmp_path / "t"), classes=2, train_per_class=1, val_per_class=1,
                     around=(40, 30), quirks=False)
    (tmp_path / "file").write_text("a file, not a folder")
    r = run_cli(tree.root, "--out", str(tmp_path / "file" / "p"), "--workers", "1", "--quiet")
    assert "Not a directory" in r.stderr  # an OSError: one line too
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_tree_generator_command(tmp_path, capsys):
    from models import imagenet_tree

    assert imagenet_tree.main([str(tmp_path / "t"), "--classes", "5", "--train", "2", "--val",
                               "1", "--layout", "ilsvrc-folders"]) == 0
    assert "10 training and 5 validation images, 5 classes" in capsys.readouterr().out
    found = mp.scan(str(tmp_path / "t"))
    assert len(found["train"]) == 10 and len(found["val"]) == 5
    sizes = []
    for path, _ in found["train"] + found["val"]:
        with Image.open(path) as im:
            sizes.append(im.size)
    assert len(set(sizes)) > 5 and 300 < np.mean([w for w, _ in sizes]) < 700  # around 500x375
    with pytest.raises(SystemExit) as stop:
        imagenet_tree.main([str(tmp_path / "u"), "--classes", "2"])
    assert stop.value.code == 2 and "quirks need" in capsys.readouterr().err


def test_a_tree_without_val_packs_an_empty_validation_split(tmp_path):
    import shutil

    tree = make_tree(str(tmp_path / "t"), classes=2, train_per_class=2, val_per_class=1,
                     around=(40, 30), quirks=False, layout="folders")
    shutil.rmtree(os.path.join(tree.root, "val"))
    s = mp.pack(tree.root, str(tmp_path / "p"), size=16, workers=1, progress=False)
    assert (s["train"], s["val"]) == (4, 0)
    p = mp.open_pack(str(tmp_path / "p"))
    assert len(p.split("val")) == 0 and p.split("val").images.shape == (0, 16, 16, 3)


# -- the verification stamp -----------------------------------------------


@pytest.fixture
def hashed(monkeypatch):
    """The splits whose chunks :func:`open_pack` hashes, in order."""
    calls, real = [], mp._verify_split

    def counting(path, name, *args):
        calls.append(name)
        return real(path, name, *args)

    monkeypatch.setattr(mp, "_verify_split", counting)
    return calls


def test_packing_stamps_the_pack_and_auto_trusts_the_stamp(tree, packed, hashed):
    out = packed[0]
    stamp = json.load(open(os.path.join(out, mp.STAMP)))
    assert set(stamp["files"]) == {"train.u8", "val.u8"}
    assert stamp["files"]["train.u8"]["size"] == os.path.getsize(os.path.join(out, "train.u8"))
    mp.open_pack(out)
    mp.open_pack(out, verify="auto")
    assert hashed == []  # packing stamped it: no start reads the images again
    mp.open_pack(out, verify="full")
    mp.open_pack(out, verify=True)
    assert hashed == ["train", "val"] * 2  # full always hashes


def test_an_unstamped_pack_is_verified_once_then_stamped(packed, tmp_path, hashed):
    out = copy_pack(packed[0], tmp_path / "old")  # as a pack from before stamps
    assert not os.path.exists(os.path.join(out, mp.STAMP))
    a = mp.open_pack(out)
    assert hashed == ["train", "val"] and os.path.isfile(os.path.join(out, mp.STAMP))
    b = mp.open_pack(out)
    assert hashed == ["train", "val"], "the second auto opening hashed the chunks again"
    assert (np.asarray(a.split("train").images) == np.asarray(b.split("train").images)).all()
    mp.open_pack(out, verify="quick")
    mp.open_pack(out, verify=False)
    assert len(hashed) == 2


def test_auto_catches_a_chunk_changed_after_stamping(packed, tmp_path):
    out = copy_pack(packed[0], tmp_path / "c")
    mp.open_pack(out)  # stamped
    file = os.path.join(out, "train.u8")
    st = os.stat(file)
    flip_byte(file, 9 * SIZE * SIZE * 3 + 5)  # image 9: chunk 1 (7 images a chunk)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a date that differs, surely
    with pytest.raises(mp.PackError, match=r"train.u8 images 7\.\.13 fail their checksum"):
        mp.open_pack(out)
    assert not os.path.exists(os.path.join(out, mp.STAMP))
    with pytest.raises(mp.PackError, match="fail their checksum"):
        mp.open_pack(out)  # and again: nothing was remembered as verified


def test_full_catches_a_change_whose_date_was_put_back(packed, tmp_path):
    out = copy_pack(packed[0], tmp_path / "c")
    mp.open_pack(out)  # stamped
    file = os.path.join(out, "val.u8")
    st = os.stat(file)
    flip_byte(file, 2 * SIZE * SIZE * 3)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))  # the date put back
    assert os.stat(file).st_mtime_ns == st.st_mtime_ns
    with pytest.raises(mp.PackError, match=r"val.u8 images 0\.\.6 fail their checksum"):
        mp.open_pack(out, verify="full")
    assert not os.path.exists(os.path.join(out, mp.STAMP))  # auto no longer trusts it either
    with pytest.raises(mp.PackError, match="fail their checksum"):
        mp.open_pack(out)


def test_auto_trusts_a_stamp_that_matches(packed, tmp_path):
    """Damage that changes no size or date (a disk's bit flip) passes auto, as
    documented; full finds it and drops the stamp."""
    out = copy_pack(packed[0], tmp_path / "c")
    flip_byte(os.path.join(out, "train.u8"), 100)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert mp._write_stamp(out, mp._manifest_sha256(out), mp._file_stats(out, manifest))
    mp.open_pack(out)
    with pytest.raises(mp.PackError, match=r"train.u8 images 0\.\.6 fail their checksum"):
        mp.open_pack(out, verify="full")
    with pytest.raises(mp.PackError, match="fail their checksum"):
        mp.open_pack(out)


def test_the_stamp_belongs_to_its_manifest(packed, tmp_path, hashed):
    out = copy_pack(packed[0], tmp_path / "c")
    mp.open_pack(out)
    assert hashed == ["train", "val"]
    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path))
    manifest["splits"]["val"]["chunk_sha256"][0] = "0" * 64  # another manifest, same files
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(mp.PackError, match=r"val.u8 images 0\.\.6 fail their checksum"):
        mp.open_pack(out)
    open(os.path.join(out, mp.STAMP), "w").write("{not json")  # a torn stamp: not trusted
    with pytest.raises(mp.PackError, match="fail their checksum"):
        mp.open_pack(out)


def test_a_read_only_pack_opens_verified_without_a_stamp(packed, tmp_path, hashed, monkeypatch):
    out = copy_pack(packed[0], tmp_path / "ro")
    os.chmod(out, 0o555)
    try:
        try:  # root writes into a read-only folder: then refuse the write as the folder would
            open(os.path.join(out, "probe"), "w").close()
            os.remove(os.path.join(out, "probe"))

            def refuse(path, *a, **k):
                raise PermissionError(13, "Permission denied", path)

            monkeypatch.setattr(mp, "atomic_write", refuse)
        except PermissionError:
            pass
        p = mp.open_pack(out)
        assert len(p.split("train")) == packed[1]["train"]
        assert not os.path.exists(os.path.join(out, mp.STAMP))
        mp.open_pack(out)
        assert hashed == ["train", "val"] * 2  # not remembered: verified in full each time
        assert sorted(os.listdir(out)) == ["manifest.json", "meta.npz", "train.u8", "val.u8"]
    finally:
        os.chmod(out, 0o755)


def test_a_stamp_does_not_make_an_unfinished_pack_usable(packed, tmp_path):
    out = copy_pack(packed[0], tmp_path / "u")
    mp.open_pack(out)  # stamped
    os.replace(os.path.join(out, "manifest.json"), os.path.join(out, "plan.json"))
    for verify in ("auto", "full", "quick", False):
        with pytest.raises(mp.PackError, match="unfinished pack"):
            mp.open_pack(out, verify=verify)
    with pytest.raises(ValueError, match="verify must be"):
        mp.open_pack(packed[0], verify="sometimes")


def test_the_verify_command(packed, tmp_path):
    out = copy_pack(packed[0], tmp_path / "v")
    r = run_cli("--verify", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{out}: OK (60 training and 20 validation images")
    assert os.path.isfile(os.path.join(out, mp.STAMP))
    file = os.path.join(out, "train.u8")
    st = os.stat(file)
    flip_byte(file, 30 * SIZE * SIZE * 3)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_cli("--verify", out)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and "train.u8 images 28..34 fail their checksum" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("--verify", str(tmp_path / "absent"))
    assert r.returncode == 2 and "no such pack" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("somewhere", "--verify", out)
    assert r.returncode == 2 and "takes no DIR" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("somewhere")
    assert r.returncode == 2 and "--out FILE are required" in r.stderr
