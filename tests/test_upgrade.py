"""What an older gpu-pitr wrote is read by this one as it was meant (the upgrade).

Operators upgrade the tool while its snapshots and archives stay on disk for months:
every snapshot and archive a version ever wrote must restore, ``verify`` and go on as
the log itself does, or be refused in one line naming the file. And an older reader,
given a snapshot this version writes, must restore it right or refuse it by its
``format_version``, never restore a wrong state in silence.

``_FIXTURE`` is a tar.xz of what older commits wrote for the same operations
(``_write_log``, run under each commit with its own ``WalWriter``, then its command
line):

- ``wal/``: the log, written by 7674b62 (2026-11-26; byte for byte what 43d1eec,
  ad227cf, e50b4a0 and 146307c write too);
- ``snap_2026-11-26/``, ``snap_2026-12-04/``, ``snap_2026-12-05/``: ``gpu-pitr
  snapshot wal --out ...`` after the first writer closed, transaction 7 open there
  (two records pending), by 7674b62, ad227cf and 146307c: pending records listed one
  by one, then as runs; ``history_complete`` absent, then present;
- ``archive_2026-12-03/``: ``gpu-pitr archive wal --out ...`` at the same moment, by
  43d1eec (before the archive's checksum file).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.archive import archive
from gpu_pitr.format import entries as E
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.snapshot.format import FORMAT_VERSION, write_snapshot
from gpu_pitr.verify import verify_wal

_FIXTURE = (
    "/Td6WFoAAATm1rRGAgAhARYAAAB0L+Wj4Mf/Dj9dABcLvBx9AZXAHUo+eRW/ePpNnj3OTOpzG7tH"
    "To59BovV/78mhDiFdYNGgSya7qtsykYaY/FZLcRVdZjiWanZ3RIV8s83evHVWVX+Q1neU3lljMZq"
    "6Fm0oqxnVZKnxHCY5KeI2r0MdtF26R7iOIJJgTbqvNgXX8wRsgaoh5hu0apkI/2VDwVtmEooqZiy"
    "GIZTHI5Dhk9MIx2PX+ryVm3QqrMRHd1YLN26FXvih+KLuvGtul2sQ/6oCJbwdBntjC5UkGGRi1Op"
    "pJ51qadN6BsPXD4PnMZrEKFTRXOo2r4H0sdM/a8AYkJw4Z4NkYgOeESmu9PpUQlk5HqH9fVd5pn2"
    "NcRTMZoLrlSSd3xabrsiDjL5oA6u3JHz1lbnFAXsE+QiZwLHLIPIuTxzNTcawmhYIOtAP/1luUDP"
    "4fEQfkDrjLKcu2Cwjzb3EKZPkL4e5/ZSqW6UreCjt6NfFJxvoADnmWN68e9VcH5U/+asH5N+Pcnw"
    "17e3M9vQOqmrL9lniu15TgBwzB3yTUGFxPNyvDquoG3WBQVnW7L6YG/PuibI138DecFZMzeIf/ot"
    "vXRtM4VE3xvzyrEmg/F/xezcndipfPNeAXAjVRRbMDYOO85Qrin12IDAtEl3uVeLzkpk2PfIzhh6"
    "csIOsB8ZtsG4JlXnY1fFuowRtv4xEtvjnD7hRjd4DvRmI3HPrbN/9mZzb7OnHC8An5el++LNrYvk"
    "DDCrZjyPkR0jW1u6RpMf19EbqG5wv1u+yekizNxWMc+vfu0GZwf26KVRiHfeESiRb0JWmeNbWw36"
    "zMQ9dKzqZTFBMVHZWmRhcFSzcsgRtpzq3WYyXYRchLaLZ3mDNVM60QzLhlusOTyPbkeaR3D3jrOC"
    "okT0XsmiiApags2+DRKBM6rlBFs0n7CqZ7aGxsmz47uJfQUrh/kW+JMUabUZHUmxDYu/NpKiGgJw"
    "+8A1vP7ArPnskMw5wA4TMT6hv0ZpJlPinfOrQG74IQsm8XM6g2BNvwRtfY05HmhXu14WfboKOHJQ"
    "4h5A944BsVcL7GenX5EdcwDsPpBAD9mt3hclZ+wIHbxmdMuYjgFYIQNwjouAC8G66a1eqTL8CrSP"
    "5fJj94ewqiJnFLbBgATmLbbhqlFD7k64AHbpuIkXe4sDssKAPUiQq0bw3sjVYbkY9Kkl6MPU7kXG"
    "x2Kl8LdB1UCpJudLJVFpMKmeXbkqsb72qM72HbcdbG1rgiygrED5/sBaMzp5IHalUapOdSUi+1GG"
    "MKST5ruQ2xb0pAMFhv6q8pOuP62x/NQp7mPrFIYNQemxDHO6/jGeiqrnO2343GYgWipljW92Lxub"
    "YAY9hIQiFNnZmgIIK+FweeJrsNJLhuL2KRfX6BA0zLVe+kaQ44DLyYv1O3nyWTUb62KYJ0l5qGJc"
    "77qzv2kRDtsBj1JFeUmtiZBl4J75oOKH8wY3VCAxmfyMEc3evizrfkTmspp8jekspCmHDVWJ9+CK"
    "WT8nYfczlbn7gJ7u7zDFueDCSR0uB4l+7SwXDfhS73drKz/bSwLKKg8RTROzcrFphZj9iPdjOgfR"
    "QRwF+BzHVPXhUSwCxU1/4fynu+se5TavpZEe0n6esMl8BGwng753kW8oUc1BANd9+4bPXWheCzoK"
    "n1n0p6po7OfKCH32xY4oCdqILliGeLvfwUPBSrhdsIYZRLRGSLcTljk5C+JWXbg2Ax+XMf1+JIf9"
    "67vO75uPSa7oYlJVNvkPldlc7tNs/x8IfL9pcYXdLEAJGBPqOhUnQ0vWiukc9kPmw5g6YKuQzAl+"
    "L0Cy4D9Zrg4O3TJZPa2UG23QZO2onR/V9NiaB20YkgnK/J85lQgFv1JNcidt1VtzdhqoiFQ0VsOf"
    "9vmmOpfdUGxS4H65WGAaEPAfD4475BgcbZrAyDQiEc7LVl2rmvKPzcDDQXEupYI1UF0uyXVGg445"
    "iWPIuUgcJIhsC8Dvf7cAZwHgR43LIMbix3xFjGBeE0SAUF1Dw4XOjw/aKnl//J/ionzv7vI49e/Q"
    "ZYVqvqev0XwvkuPPvjzDAR55/px/+tp3l63NAhOo39AMQn9eZSqQo/ozdmvsI9XKR5CxXbtUuekU"
    "WPGOEs1Um6vR9tFDfF85aKvRmWcVWxi8D41xa3PQj3grq/3Of2n4l8YRoN5VOcW0VhdOUoVjDLEC"
    "bnV/1tnbl1Izo+XKvxPNgOV5pMGfhH5BB4/9YYsSKLNbrTzu4AogHaTm00dKaM6lWvmK58f3dk2m"
    "Aji5tPAZjD0ZRacynUvOrzHawHOH8bmwAyqei6KWrgRDnT+SXN2nPyC35gzOr9fRS+uglj0Tf+Qu"
    "SeBNuEP0H2ep21Yz887w1UJDIqEg4+J2c3GJZ8viKq8oSQq5q7WAn9hF/wJBDRhZPoltlF17nrlH"
    "GZfzAwyCoi679VBETy5d0fXFySBca5aKdN4pA8ErXmQ2LP3oNmlibDkKFJ2Flb8/E/tSXbM40YWH"
    "RHhnH4qHHHhSN7xGvamWZzLPmFCvHbVEZE5/LdwhIMjfdXuBGHEhuBsCloNdjoApZ/jJwmqeRRCN"
    "mEWmIvBo1vDF7vhyx6A0OelcdZdTxr7mfEQsuGVCh5oOTH4R9uq//xY8mB5qRhwKDzDv+TRd5pUY"
    "4T01SXbt0uUHmf/TqPCuiD05qKpblcIPsTeaVLER70RG6snQckhPpbSWsmupQCQNMvrxSyuKKYmS"
    "JLGSMMDyuz2WVUq9U46gRd4krDzqmPbMdFPHWcdqOayErjaPqqJMG9+74TZL1UHZoLu6TDGoTZzr"
    "u7PbYS+eCCCYCwKT1o6s9tFEMhx3UgsjFJAb5H7zcV+0Ks8h97aqqGTLhqDmRHC940pm2W+tAiSy"
    "N7Czy+ufclsCsC1RUpqpf04CRzIEL5SuilBDNgO+F1+MS34V2PEIkriBSdJ/Vomk7IDmc9Tvj+Y/"
    "ohkooADm65iKqqiT2oYv3C5yFdastYtZ8SFsJVS6nyLUJ8CSvnKqJvURvsDeth1lOE65yu6IA7Gf"
    "GqX/aszFTyRrBzHLn9ukCx6z18WE8WOT43bBQ8aHHxE/1dAh2aiUw/8GUyVw0Zuiki11vml17QC0"
    "Gm0FlT0R8rU5OCpemkdY+c5AjhLeT0MpU1ocTjU9yTCpp2I0N5E9aJPrZ58oMbFHrWAKDO1wdj86"
    "WkN1RbJPL5bVRGiRtCLq9pNzHpQx/1xW0MYkwUgoJgvK6buVL9BDXnB/zDsiMOyPA3YKf+MiXYMK"
    "gM4ct4T86hCXt6CBeO1UcU6eSKHIdpNo4vDapNHRfJpdm10lEy0zcqZIrrifzptbFjIxL2tG2r5j"
    "NK3LaRquOeN/vPLH8H8/OS6bFJ12wU5CN8omyzgaI63Xnd7We5fJ+pLkITvtfK8ph/7Wx9MStIsq"
    "kHHuvL9q53/qDlKS/5I0N5TUG7xyBN3nLKaEOiCbgtoycCpYOzWbhYM2/sgc1EDgiH8S95yjbxxw"
    "YTVpoxsfJWSN/tzAMP0oULKfgHNNnI3daHST/rQfrF2/zaVlZbpi+SPp75+FqzdbGH5ZXzK3bGoa"
    "s61GkoI3kZL2TncwZMWp8katky4KovmXpS6Zpdkc58b7LAK9UDRGRe/slO8Ao7UkDPw0WlUHo6Ps"
    "K23doz+z+n4Dwjg1DB1k8aH1n91v1oDiqM/Lnc6CBVbvFM+TBHY/6TsKsz6lieeRYE7TncYSImRi"
    "p1N1LXfqMPLiPvIPlRjVpc/FXRWFeBUhjxgqJblEnc2ICoPGdgj+uiwbKblo+ODG6w8RI65j2fPd"
    "t936ZyO4Vqe2ikQpUfafj5n4uDYksBqxb5zdo/dVThGKI3+1n3IhcZuhRm0HgJethA3RLI6eRTW5"
    "H+5QVdXk9lWX6fEWy7BEqIHovlsLkiv0Q/0norfuLobL04oErzW2NtXNoWdEPg8NsRxbF4Pwwttu"
    "f6sdcXINiokO4inXb7o7Frk4Lia4PbQlKzc4y/nZHEbCj5EmIHdh2T51VhSIFxviw6MRmtx8U18w"
    "ifY+AtDrxVd3RJ5yEHalSlsa5zl1ymAIy1ihVmsc7r8emMJoJy68affTlylwpbU+P9T0nDR8dYmE"
    "pyJRXT1XzAZnCttzhg20BFXmkcdHr/gSipU8LTaPGJ63cjzhTy0lUu8Lrn2rixVGQsMjRuxDSc7t"
    "xgtfDWUznFXkUCuaDW4TZBPR7oJFJCwl6anzaR3vxz70W2Yya1Ut+507vlDlgAwXaN0hS3wsdJ5u"
    "kWBjKsN8bU/8H570HWdT6a6/Gu3KNqHfFpbEI9U247saXeosg/cFy1feJAj8gS53LfXl8z/C0HUQ"
    "Hi/8UvGgcMHvuX6leg0Ol9Yu3s4/uhMScZDaxggRbMvXbHp9fELDUcNpHQ832lXkQ7OkBgGRQllu"
    "932XxnxgPtVXzrl44ykYLtxvSWjYROshuyiBKLVRQSjI2qN5JKduxdIFbvzoXXP0RurInhXBrBBG"
    "yZY8/Pf5ofvx72rhMf+HNsvZccf8NmVaQab+LTgCYt2hi54kf9g8QLXm7Z6uSGhtggEelYH9SGCl"
    "kkf9k0epSA74JdI2lECt/4sWt3ABHLKoFKOCspiPCV/xC5sHFzaUhjdC3lB6mMbDxCl/ojVfgXRO"
    "z80iyZh4/mx2HwjaH1rrCvhIfcWaYmpP5Lf+U6w/AFydRDMyu645YBOUyvDJkfIaE4KbV1Iv7ZV8"
    "COVmziNcXRVB1NpagGmmtBkXdQN+JHxtJgCDo//11R0NCwS9uokZoQGZMi4wtqQJx6IE5zkCALgY"
    "A0Td3Jj9HhOjIYCJXk/eG8P2wncIGKlUlJTpTlnEr5dD/G5JaWfUip1VyDzQBbsnTn9GIG5HsnBP"
    "PY4QGEfkS+YGPXgWjVTTTqd4HIAwRuDskFFCWsgAAAAAV9FeaN251QAB2xyAkAMAuh/bJbHEZ/sC"
    "AAAAAARZWg=="
)
SNAPSHOTS = ("snap_2026-11-26", "snap_2026-12-04", "snap_2026-12-05")
T0 = 1_780_000_000


def _unpack(tmp_path: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(_FIXTURE)), mode="r:xz") as tar:
        tar.extractall(tmp_path / "old", filter="data")
    return tmp_path / "old"


def _write_log(wal: Path) -> None:
    """The operations behind the fixture: inserts (NaN and -0.0 components; no, empty
    and three-pair metadata; ids with NUL and non-ASCII), updates, deletes, batches,
    a checkpoint, then a second writer (a restart) that commits the transaction open
    across it, aborts another and goes on. ``now`` moves only where the generator's
    clock did (rotations at 900 bytes within one second: headers in one file)."""
    now = [T0]

    def vec(i):
        v = np.arange(4, dtype=np.float32) + i
        if i % 7 == 3:
            v[0], v[1] = np.float32("nan"), -0.0
        return v

    def meta(i):
        return (None, {}, {"k": f"v{i}", "z": "\u00e9\u2028", "a": str(i)})[min(i % 5, 2)]

    def ident(i):
        return [f"doc-{i:03d}", f"d\0{i}", f"\u00fc-{i}"][i % 3]

    def phase(writer, lo, hi, t):
        for i in range(lo, hi):
            t += 1
            writer.append(E.Insert(ident(i), vec(i), meta(i), t))
            if i % 4 == 2:
                t += 1
                writer.append(E.Update(ident(i - 1), vec(i + 100), meta(i + 1), t))
            if i % 6 == 5:
                t += 1
                writer.append(E.Delete(ident(i - 3), t))
            if i % 9 == 8:
                t += 1
                writer.append(E.Batch([E.Insert(ident(i + 1000), vec(i + 1000), None, t),
                                       E.Delete(ident(i - 2), t)], t))
        return t

    def step(entry_of):
        now[0] += 1
        writer.append(entry_of(now[0]))

    writer = WalWriter(wal, created=T0, clock=lambda: now[0], max_segment_bytes=900)
    now[0] = phase(writer, 0, 30, now[0])
    step(lambda t: E.BeginTransaction(7, t))
    step(lambda t: E.Insert("in-tx-1", vec(500), {"tx": "1"}, t))
    step(lambda t: E.Delete(ident(4), t))
    step(lambda t: E.Checkpoint(writer.next_seq - 1, t))
    writer.close()
    writer = WalWriter(wal, created=now[0] + 5, clock=lambda: now[0], max_segment_bytes=900,
                       next_seq=writer.next_seq)
    now[0] += 5
    step(lambda t: E.Insert("in-tx-2", vec(501), None, t))
    step(lambda t: E.CommitTransaction(7, t))
    step(lambda t: E.BeginTransaction(8, t))
    step(lambda t: E.Insert("aborted", vec(502), None, t))
    step(lambda t: E.AbortTransaction(8, t))
    now[0] = phase(writer, 30, 60, now[0])
    writer.close()


def test_the_log_an_older_writer_wrote_is_what_this_writer_writes(tmp_path):
    """SPEC section 1 is fixed: the same operations give the same bytes, whatever
    version of the writer wrote them."""
    old = _unpack(tmp_path) / "wal"
    _write_log(tmp_path / "wal")
    names = sorted(p.name for p in old.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "wal").iterdir())
    for name in names:
        assert (tmp_path / "wal" / name).read_bytes() == (old / name).read_bytes(), name


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_an_older_versions_snapshot_restores_as_the_log_does(tmp_path, name):
    old = _unpack(tmp_path)
    wal, snap = old / "wal", old / name
    assert snapshot.verify(snap)["clean"]
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["position"]["pending"]["transactions"] == [[7, 2]]
    for to_seq in (None, 50):
        kw = {} if to_seq is None else {"to_seq": to_seq}
        based = gpu_pitr.restore(wal, backend="cpu", base=snap, **kw)
        whole = gpu_pitr.restore(wal, backend="cpu", **kw)
        assert w.index_view(based) == w.index_view(whole)
        assert based.report.stop == whole.report.stop
    # What the open transaction did comes from the snapshot's pending records.
    assert "in-tx-1" in based.id_list()


def test_an_older_versions_archive_goes_on(tmp_path):
    """An archive made before there were checksums: this version's run copies what is
    new and records sums; the archive restores as the log does and verifies clean."""
    old = _unpack(tmp_path)
    arch = old / "archive_2026-12-03"
    result = archive(old / "wal", arch)
    assert [s.action for s in result.segments] == ["unchanged", "new"]
    assert (arch / ".gpu-pitr-archive.sums").is_file()
    assert verify_wal(arch).clean
    assert (w.index_view(gpu_pitr.restore(arch, backend="cpu"))
            == w.index_view(gpu_pitr.restore(old / "wal", backend="cpu")))


def test_a_snapshot_an_older_reader_would_misread_says_version_2(tmp_path):
    """Readers of before 2026-12-05 look for the pending records as ``records``; given
    a snapshot whose position lists ``record_runs`` under format version 1, they drop
    the open transaction's records and restore a wrong state (7674b62 and ad227cf
    did: ``in-tx-1`` missing, ``doc-004`` still there). Version 2, which every older
    reader refuses by name, is written where that can happen, and only there."""
    old = _unpack(tmp_path)
    wal = old / "wal"
    open_tx = gpu_pitr.restore(wal, backend="cpu", to_seq=48)
    assert open_tx.position["pending"]["record_runs"]
    snapshot.save(open_tx, tmp_path / "open")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), tmp_path / "closed")
    version = {p: json.loads((tmp_path / p / "manifest.json").read_text())["format_version"]
               for p in ("open", "closed")}
    assert version == {"open": 2, "closed": 1}
    assert FORMAT_VERSION == 2
    based = gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "open")
    assert w.index_view(based) == w.index_view(gpu_pitr.restore(wal, backend="cpu"))
    # A state restored across a gap: readers of before 2026-12-03 would take it as
    # complete.
    from gpu_pitr.snapshot.format import manifest_version

    assert manifest_version({"history_complete": False}) == 2
    assert manifest_version({"history_complete": True, "pending": {"record_runs": []}}) == 1
    gap = write_snapshot(tmp_path / "gap", open_tx, position={"history_complete": False})
    assert json.loads((gap / "manifest.json").read_text())["format_version"] == 2
    assert snapshot.load(gap).position == {"history_complete": False}
    shutil.rmtree(old)


def _version(snap: Path, version: int) -> None:
    """``snap``'s manifest says ``version`` (its checksum written again)."""
    import zlib

    doc = json.loads((snap / "manifest.json").read_text())
    raw = json.dumps({**doc, "format_version": version}, sort_keys=True).encode()
    (snap / "manifest.json").write_bytes(raw)
    (snap / "manifest.json.crc").write_text(f"{zlib.crc32(raw):08x}\n")


def test_a_newer_versions_snapshot_is_passed_over_as_such_not_as_damage(tmp_path, capsys):
    """Hosts upgraded one by one share a directory of snapshots: one a later gpu-pitr
    wrote is passed over by --snapshots and left by expire, and the lines say a newer
    gpu-pitr wrote it (they said 'is damaged': a fleet mid-upgrade read as snapshots
    going bad)."""
    from gpu_pitr import cli
    from gpu_pitr.expire import expire

    old = _unpack(tmp_path)
    wal, snaps = old / "wal", tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=60), snaps / "a")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), snaps / "b")
    _version(snaps / "b", FORMAT_VERSION + 1)
    newer = f"snapshot {snaps / 'b'} was written by a newer gpu-pitr ("
    out = tmp_path / "x.npz"
    assert cli.main(["restore", str(wal), "--snapshots", str(snaps), "--out", str(out),
                     "--backend", "cpu"]) == 0
    err = capsys.readouterr().err
    assert newer in err and "damaged" not in err, err
    assert archive(wal, tmp_path / "arch").ok
    result = expire(tmp_path / "arch", snaps, keep=1)
    assert [line.startswith(newer) for line in result.damaged] == [True]
    assert (snaps / "b" / "manifest.json").is_file() and (snaps / "a").is_dir()


def test_verify_and_inspect_say_a_newer_versions_snapshot_is_not_damaged(tmp_path, capsys):
    """The backup job's check of the same directory (``verify SNAPS``) and its listing
    (``inspect SNAPS``) said DAMAGED of a snapshot a later gpu-pitr wrote, and counted it
    damaged, where restore and expire say a newer gpu-pitr wrote it. It is not clean
    still (exit 1): this version cannot check it."""
    from gpu_pitr import cli

    b = w.LogBuilder()
    for k in range(6):
        b.add(w.Ins(f"d{k}", w.f32(k, k), None, 100))
    wal = b.write(tmp_path / "wal")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=2), snaps / "a")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), snaps / "b")
    _version(snaps / "b", FORMAT_VERSION + 1)
    capsys.readouterr()
    assert cli.main(["verify", str(snaps)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "DAMAGED" not in "\n".join(out), out
    assert out[-2].startswith(f"{snaps / 'b'}: NOT CHECKED: snapshot written by a newer "
                              "gpu-pitr (")
    assert out[-1] == (f"{snaps}: NOT CHECKED: 2 snapshots, 0 damaged, 1 written by a newer "
                       "gpu-pitr (not checked)")
    assert cli.main(["verify", str(snaps), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [d.get("newer", False) for d in doc["snapshots"]] == [False, True]
    # Damage as well: the directory is DAMAGED, naming both counts.
    (snaps / "a" / "manifest.json.crc").write_text("00000000\n")
    assert cli.main(["verify", str(snaps)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{snaps}: DAMAGED: 2 snapshots, 1 damaged, 1 written by a newer gpu-pitr (not "
        "checked)")
    assert cli.main(["inspect", str(snaps)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"snapshots in {snaps}: 2, 1 with a damaged manifest, 1 "
                                   "written by a newer gpu-pitr (oldest first)")
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[3:5]}
    assert rows == {"a": "DAMAGED:", "b": "NEWER:"}
