#!/usr/bin/env python3
"""The Python side of `cargo bench -p sentinel-pe --bench extraction`: times pefile on the same
files the Rust side parsed, the way the training data was produced (pefile.PE(data=...)), and
prints one JSON line: {"fast": RUN, "full": RUN} where RUN is
{"files": N, "bytes": B, "seconds": S, "errors": E}: "fast" is `fast_load=True` (headers and
section table: what the pe-header schema reproduces), "full" is the default full load (all data
directories too: the peer of the pe-rich schema).

File paths come on standard input, one per line. Reading the files is not timed (the Rust side
times extraction from bytes already in memory too).
"""

import json
import sys
import time

import pefile


def main() -> None:
    blobs = []
    for line in sys.stdin:
        path = line.rstrip("\n")
        if path:
            with open(path, "rb") as fh:
                blobs.append(fh.read())
    print(json.dumps({"fast": timed(blobs, fast_load=True), "full": timed(blobs, fast_load=False)}))


def timed(blobs: list, fast_load: bool) -> dict:
    errors = 0
    started = time.perf_counter()
    for data in blobs:
        try:
            pe = pefile.PE(data=data, fast_load=fast_load)
            _ = (pe.DOS_HEADER.e_lfanew, pe.FILE_HEADER.Characteristics, pe.OPTIONAL_HEADER.ImageBase)
        except pefile.PEFormatError:
            errors += 1
    seconds = time.perf_counter() - started
    return {"files": len(blobs), "bytes": sum(map(len, blobs)), "seconds": seconds, "errors": errors}


if __name__ == "__main__":
    main()
