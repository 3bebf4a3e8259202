"""Finding the input text, and downloading it when there is no local copy: Multi30k (every file checked
against the shipped ``multi30k.sha256``) and WMT14 (the archives of fairseq's prepare-wmt14en2*.sh,
checked by reading them through).  Every file is written with :func:`mdn_fairseq.files.atomic_write`."""

import gzip
import hashlib
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..files import atomic_write
from .config import SPLITS, PrepareError, as_resource, shipped_configs
from .staged import StagedFiles
from .text import copy_lines, read_parallel

DATA_HINT = "pass --data DIR with a local copy"
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
# The WMT14 corpora of fairseq's examples/translation/prepare-wmt14en2{de,fr}.sh, with newstest2013
# (WMT17's dev.tgz) as the validation set and newstest2014 (test-full.tgz) as the test set.
WMT14 = {
    "wmt14_en_de": {
        "urls": [
            "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
            "http://data.statmt.org/wmt17/translation-task/dev.tgz",
            "http://statmt.org/wmt14/test-full.tgz",
        ],
        "train": ["training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v12.de-en"],
        "valid": "dev/newstest2013",
        "test": ("test-full/newstest2014-deen-src.{lang}.sgm", "test-full/newstest2014-deen-ref.{lang}.sgm"),
    },
    "wmt14_en_fr": {
        "urls": [
            "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            "http://statmt.org/wmt13/training-parallel-un.tgz",
            "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
            "http://statmt.org/wmt10/training-giga-fren.tar",
            "http://data.statmt.org/wmt17/translation-task/dev.tgz",
            "http://statmt.org/wmt14/test-full.tgz",
        ],
        "train": [
            "training/europarl-v7.fr-en",
            "commoncrawl.fr-en",
            "un/undoc.2000.fr-en",
            "training/news-commentary-v9.fr-en",
            "giga-fren.release2.fixed",
        ],
        "valid": "dev/newstest2013",
        "test": ("test-full/newstest2014-fren-src.{lang}.sgm", "test-full/newstest2014-fren-ref.{lang}.sgm"),
    },
}


Folders = Union[str, os.PathLike, Sequence]  # one folder, or folders searched in order


class DownloadFailed(PrepareError):
    """A file could not be fetched (no network, no such file on the server); not a damaged download."""


# ----------------------------------------------------------------------------------------------
# checksums


def sha256_file(path) -> str:
    """The SHA-256 of a file, as 64 lower-case hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sha256sums(path) -> Dict[str, str]:
    """``{file name: sha256}`` from a ``sha256sum``-format file (a path or a shipped resource); a malformed
    line raises :class:`PrepareError` naming ``file:line``."""
    sums = {}
    for n, line in enumerate(as_resource(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.rstrip())
        if not m:
            raise PrepareError(f"{path}:{n}: malformed checksum line {line!r} (expected: SHA256  FILE)")
        sums[os.path.basename(m.group(2))] = m.group(1).lower()
    return sums


def verify_sha256(path, expected: str, listed_in) -> None:
    """Raise :class:`PrepareError` when ``path``'s SHA-256 is not ``expected`` (as listed in ``listed_in``)."""
    actual = sha256_file(path)
    if actual != expected:
        raise PrepareError(
            f"{path}: SHA256 mismatch (expected {expected} as listed in {listed_in}, got {actual}): "
            "the file is damaged or not the published one; fetch it again"
        )


# ----------------------------------------------------------------------------------------------
# finding the input


def _folders(folders: Folders) -> List[Path]:
    return [Path(folders)] if isinstance(folders, (str, os.PathLike)) else [Path(f) for f in folders]


def find_input(folders: Folders, name: str) -> Optional[Path]:
    """``name`` or ``name.gz`` (the plain file first) in the first of ``folders`` (a folder or a list of
    folders searched in order) that has it, or None."""
    for folder in _folders(folders):
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand.is_file():
                return cand
    return None


def find_split_files(folders: Folders, split: str, stem: str, src: str, tgt: str) -> Tuple[Path, List[Path]]:
    """``(source_file, [reference_files])`` of one split, looked for in ``folders`` (one or a list, in order).

    The target is ``{stem}.{tgt}``, or, when that is absent, the multiple references ``{stem}.{tgt}0``,
    ``{stem}.{tgt}1``, ... (NIST style).  A missing file raises :class:`PrepareError` naming the folders and
    the file names tried.
    """

    def missing(lang, name):
        where = " or ".join(str(f / name) for f in _folders(folders))
        return PrepareError(
            f"missing input file for split {split} ({lang}): {where} (or {name}.gz) not found; "
            f"{DATA_HINT}: a folder with {stem}.{src} and {stem}.{tgt} (plain or .gz)"
        )

    source = find_input(folders, f"{stem}.{src}")
    if source is None:
        raise missing(src, f"{stem}.{src}")
    single = find_input(folders, f"{stem}.{tgt}")
    if single is not None:
        return source, [single]
    refs = []
    while (ref := find_input(folders, f"{stem}.{tgt}{len(refs)}")) is not None:
        refs.append(ref)
    if not refs:
        raise missing(tgt, f"{stem}.{tgt}")
    return source, refs


# ----------------------------------------------------------------------------------------------
# downloads


def fetch(url: str, dest, sha256: Optional[str] = None, log=print) -> None:
    """Download ``url`` to ``dest`` atomically, checking ``sha256`` when given.

    A failed download raises :class:`DownloadFailed` (no folder is made for ``dest``), a checksum mismatch
    :class:`PrepareError`; both leave ``dest`` as it was.
    """
    log(f"   downloading {url}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, atomic_write(dest, "wb") as out:  # no folder when it fails
            for block in iter(lambda: r.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise PrepareError(
                    f"checksum mismatch for {url} (expected {sha256}, got {digest.hexdigest()}); the file was "
                    f"deleted; {DATA_HINT}"
                )
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = (
            f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        )
        raise DownloadFailed(f"download failed: {url}: {reason}; {DATA_HINT}") from e


def multi30k_missing(cfg, stems: Iterable[str], folders: Folders) -> List[str]:
    """The Multi30k files (``{stem}.{lang}.gz``) of ``stems`` that none of ``folders`` holds (plain or .gz)."""
    return [
        f"{stem}.{lang}.gz"
        for stem in stems
        for lang in (cfg.src, cfg.tgt)
        if find_input(folders, f"{stem}.{lang}") is None
    ]


def download_multi30k(cfg, dest, log=print, stems: Optional[Iterable[str]] = None, present: Folders = ()) -> Dict:
    """Fetch Multi30k files (``{stem}.{lang}.gz``; ``stems``: the config's train, valid and main test set)
    into ``dest``, each checked against the shipped ``multi30k.sha256``; files already in ``dest`` with the
    right checksum, and files that one of the ``present`` folders holds (plain or .gz), are not fetched.

    ``MDN_MULTI30K_URL`` overrides the base URL and ``MDN_MULTI30K_SHA256`` the checksum file (tests).
    Returns ``{"source": base URL, "files_fetched": n}``.  A file with another checksum than listed raises
    :class:`PrepareError` naming it; a failed download, or a file without a listed checksum, raises
    :class:`DownloadFailed`.
    """
    base = os.environ.get("MDN_MULTI30K_URL", MULTI30K_URL).rstrip("/")
    sha_file = os.environ.get("MDN_MULTI30K_SHA256") or shipped_configs() / "multi30k.sha256"
    sums = read_sha256sums(sha_file)
    fetched = 0
    for stem in cfg.splits.values() if stems is None else stems:
        for lang in (cfg.src, cfg.tgt):
            name = f"{stem}.{lang}.gz"
            if find_input(present, f"{stem}.{lang}") is not None:
                continue
            if name not in sums:
                raise DownloadFailed(f"{sha_file} has no checksum for {name}: it cannot be downloaded and verified")
            target = Path(dest) / name
            if target.is_file() and sha256_file(target) == sums[name]:
                continue
            fetch(f"{base}/{name}", target, sums[name], log)
            fetched += 1
    return {"source": base, "files_fetched": fetched}


def sgm_segments(path) -> List[str]:
    """The ``<seg ...>text</seg>`` contents of an SGML test file, one per line (text not unescaped)."""
    seg = re.compile(r"<seg[^>]*>(.*?)</seg>", re.IGNORECASE)
    out = []
    for _, line in read_parallel([path]):
        m = seg.search(line[0])
        if m:
            out.append(m.group(1).strip())
    return out


def _wmt14_members(spec: Dict, src: str, tgt: str) -> Dict[Tuple[str, str], List[str]]:
    """``{(split, lang): [archive member, ...]}``: the files WMT14's archives hold for each split."""
    members = {("train", lang): [f"{c}.{lang}" for c in spec["train"]] for lang in (src, tgt)}
    members.update({("valid", lang): [f"{spec['valid']}.{lang}"] for lang in (src, tgt)})
    members[("test", src)] = [spec["test"][0].format(lang=src)]
    members[("test", tgt)] = [spec["test"][1].format(lang=tgt)]
    return members


def _extract(url: str, base: Optional[str], orig: Path, wanted, log) -> Dict[str, Path]:
    """Fetch one WMT14 archive into ``orig`` (unless there) and extract its ``wanted`` members (gunzipped)
    into ``orig/extracted``; returns ``{member: extracted file}``.  A damaged archive raises."""
    name = url.rsplit("/", 1)[1]
    archive = orig / name
    if not archive.is_file():
        fetch(f"{base.rstrip('/')}/{name}" if base else url, archive, log=log)
    log(f"   reading {archive}")
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # reading every member checks the whole archive
                mname = member.name[2:] if member.name.startswith("./") else member.name
                key = mname[:-3] if mname.endswith(".gz") else mname
                if key not in wanted or not member.isfile():
                    continue
                target = found[key] = orig / "extracted" / key
                if target.is_file():
                    continue
                with tar.extractfile(member) as f, atomic_write(target, "wb") as out:
                    shutil.copyfileobj(gzip.GzipFile(fileobj=f) if mname.endswith(".gz") else f, out, 1 << 20)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise PrepareError(
            f"{archive}: cannot read the archive ({e}): it is truncated or damaged; delete it "
            f"and re-run (it comes from {url}), or {DATA_HINT}"
        ) from e
    return found


def _assemble(cfg, spec: Dict, dest: Path, files: Dict[Tuple[str, str], List[Path]]) -> Dict[str, int]:
    """Write ``dest/{stem}.{lang}`` per split: train = the corpora concatenated (each checked for equal
    line counts), valid = newstest2013, test = the ``<seg>`` lines of newstest2014's SGML files.
    Returns ``{train corpus: pairs}``."""
    src, tgt = cfg.src, cfg.tgt
    counts = {}
    with StagedFiles() as staged:
        outs = {
            (s, lang): staged.open(dest / f"{cfg.splits[s]}.{lang}", binary=True) for s in SPLITS for lang in (src, tgt)
        }
        for i, corpus in enumerate(spec["train"]):
            n = {lang: copy_lines(files[("train", lang)][i], outs[("train", lang)]) for lang in (src, tgt)}
            if n[src] != n[tgt]:
                raise PrepareError(
                    f"line counts differ: {files[('train', src)][i]} has {n[src]} lines, "
                    f"{files[('train', tgt)][i]} has {n[tgt]} lines"
                )
            counts[corpus] = n[src]
        for lang in (src, tgt):
            copy_lines(files[("valid", lang)][0], outs[("valid", lang)])
            segments = sgm_segments(files[("test", lang)][0])
            outs[("test", lang)].write("".join(s + "\n" for s in segments).encode("utf-8"))
    return counts


def download_wmt14(cfg, dest, log=print) -> Dict:
    """Fetch and assemble WMT14 (as fairseq's prepare-wmt14en2{de,fr}.sh) into ``dest/{train,valid,test}.*``.

    No official checksums exist for these archives: they are checked by reading them through
    (tarfile/gzip), which catches truncated or damaged downloads.  ``MDN_WMT14_URL`` replaces the
    servers by one base URL holding every archive (tests, mirrors).  Returns ``{"source": ...,
    "train_corpora": {corpus: pairs}}``; a failed download, a damaged archive or a missing member raises
    :class:`PrepareError`.
    """
    spec = WMT14[cfg.download]
    dest = Path(dest)
    orig = dest / "orig"
    base = os.environ.get("MDN_WMT14_URL")
    members = _wmt14_members(spec, cfg.src, cfg.tgt)
    wanted = {m for names in members.values() for m in names}
    found = {}
    for url in spec["urls"]:
        found.update(_extract(url, base, orig, wanted, log))
    missing = sorted(wanted - set(found))
    if missing:
        raise PrepareError(f"the archives in {orig} do not hold {', '.join(missing)}; {DATA_HINT}")
    files = {key: [found[m] for m in names] for key, names in members.items()}
    counts = _assemble(cfg, spec, dest, files)
    return {"source": base or "statmt.org", "train_corpora": counts}
