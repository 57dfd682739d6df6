#!/usr/bin/env python3
"""Print what Python's pefile reports for the `pe-header` schema, for the Rust golden tests.

Reads file paths, one per line, on standard input; prints one JSON object per line:
{"path": ..., "values": [50 integers in PE_HEADER_COLUMNS order]} or {"path": ..., "error": ...}.

pefile.PE(data=..., fast_load=True): the header fields are the same with a full load, which only
adds the data directories (and whose rare failures there are not about the headers).
"""

import json
import sys

import pefile

COLUMNS = [
    ("DOS_HEADER", "e_magic"), ("DOS_HEADER", "e_cblp"), ("DOS_HEADER", "e_cp"),
    ("DOS_HEADER", "e_crlc"), ("DOS_HEADER", "e_cparhdr"), ("DOS_HEADER", "e_minalloc"),
    ("DOS_HEADER", "e_maxalloc"), ("DOS_HEADER", "e_ss"), ("DOS_HEADER", "e_sp"),
    ("DOS_HEADER", "e_csum"), ("DOS_HEADER", "e_ip"), ("DOS_HEADER", "e_cs"),
    ("DOS_HEADER", "e_lfarlc"), ("DOS_HEADER", "e_ovno"), ("DOS_HEADER", "e_oemid"),
    ("DOS_HEADER", "e_oeminfo"), ("DOS_HEADER", "e_lfanew"),
    ("FILE_HEADER", "NumberOfSections"), ("FILE_HEADER", "PointerToSymbolTable"),
    ("FILE_HEADER", "NumberOfSymbols"), ("FILE_HEADER", "SizeOfOptionalHeader"),
    ("FILE_HEADER", "Characteristics"),
    ("OPTIONAL_HEADER", "Magic"), ("OPTIONAL_HEADER", "MajorLinkerVersion"),
    ("OPTIONAL_HEADER", "MinorLinkerVersion"), ("OPTIONAL_HEADER", "SizeOfCode"),
    ("OPTIONAL_HEADER", "SizeOfInitializedData"), ("OPTIONAL_HEADER", "SizeOfUninitializedData"),
    ("OPTIONAL_HEADER", "AddressOfEntryPoint"), ("OPTIONAL_HEADER", "BaseOfCode"),
    ("OPTIONAL_HEADER", "ImageBase"), ("OPTIONAL_HEADER", "SectionAlignment"),
    ("OPTIONAL_HEADER", "FileAlignment"), ("OPTIONAL_HEADER", "MajorOperatingSystemVersion"),
    ("OPTIONAL_HEADER", "MinorOperatingSystemVersion"), ("OPTIONAL_HEADER", "MajorImageVersion"),
    ("OPTIONAL_HEADER", "MinorImageVersion"), ("OPTIONAL_HEADER", "MajorSubsystemVersion"),
    ("OPTIONAL_HEADER", "MinorSubsystemVersion"), ("OPTIONAL_HEADER", "SizeOfHeaders"),
    ("OPTIONAL_HEADER", "CheckSum"), ("OPTIONAL_HEADER", "SizeOfImage"),
    ("OPTIONAL_HEADER", "Subsystem"), ("OPTIONAL_HEADER", "DllCharacteristics"),
    ("OPTIONAL_HEADER", "SizeOfStackReserve"), ("OPTIONAL_HEADER", "SizeOfStackCommit"),
    ("OPTIONAL_HEADER", "SizeOfHeapReserve"), ("OPTIONAL_HEADER", "SizeOfHeapCommit"),
    ("OPTIONAL_HEADER", "LoaderFlags"), ("OPTIONAL_HEADER", "NumberOfRvaAndSizes"),
]


def header_values(data: bytes) -> dict:
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as err:
        return {"error": str(err)}
    return {"values": [getattr(getattr(pe, part), field) for part, field in COLUMNS]}


def main() -> None:
    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        with open(path, "rb") as fh:
            result = header_values(fh.read())
        print(json.dumps({"path": path, **result}), flush=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
