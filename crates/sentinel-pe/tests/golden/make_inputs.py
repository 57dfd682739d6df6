#!/usr/bin/env python3
"""Write the synthetic inputs of the golden tests: tests/golden/NAME.bin.

Every byte is made here (no third-party binaries). The expected outputs, NAME.json, are written
by the Rust test itself when run with SENTINEL_BLESS=1 and then reviewed; the pefile golden test
checks the header part of each against pefile independently.

    python3 crates/sentinel-pe/tests/golden/make_inputs.py
"""

import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent

FILE_ALIGNMENT = 0x200
SECTION_ALIGNMENT = 0x1000


def dos_header(e_lfanew: int) -> bytearray:
    dos = bytearray(64)
    struct.pack_into("<2sHHHHHHHHHHHHH", dos, 0, b"MZ", 0x90, 3, 0, 4, 0, 0xFFFF, 0, 0xB8, 0, 0, 0, 0x40, 0)
    struct.pack_into("<HH", dos, 0x24, 0x1234, 0x5678)
    struct.pack_into("<I", dos, 0x3C, e_lfanew)
    return dos


def section(name: bytes, vsize: int, va: int, raw_size: int, raw_ptr: int, flags: int) -> bytes:
    return struct.pack("<8sIIIIIIHHI", name, vsize, va, raw_size, raw_ptr, 0, 0, 0, 0, flags)


def import_section(va: int, pe32_plus: bool) -> bytes:
    """An .idata section importing two functions of KERNEL32.dll, laid out at RVA `va`."""
    thunk = "<Q" if pe32_plus else "<I"
    size = 8 if pe32_plus else 4
    descriptors = 40  # one descriptor + the null one
    ilt = descriptors
    names = ilt + 3 * size
    hint_names = [b"\0\0VirtualAllocEx\0", b"\0\0LoadLibraryA\0"]
    dll_name_at = names + sum(len(h) for h in hint_names)
    data = bytearray(struct.pack("<IIIII", va + ilt, 0, 0, va + dll_name_at, va + ilt))
    data += bytes(20)
    offset = names
    for hint_name in hint_names:
        data += struct.pack(thunk, va + offset)
        offset += len(hint_name)
    data += struct.pack(thunk, 0)
    for hint_name in hint_names:
        data += hint_name
    data += b"KERNEL32.dll\0"
    return bytes(data)


def resource_section(va: int) -> bytes:
    """A three-level resource tree (type 10 / id 1 / language 0x409) with one 64-byte blob."""
    payload = bytes(range(64))
    root = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", 10, 0x8000_0000 | 24)
    name = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", 1, 0x8000_0000 | 48)
    lang = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", 0x409, 72)
    entry = struct.pack("<IIII", va + 88, len(payload), 0, 0)
    return root + name + lang + entry + payload


def pe(pe32_plus: bool, overlay: bytes = b"", rich: bool = True) -> bytes:
    """A small, well-formed executable: .text, .idata, .rsrc, then an optional overlay."""
    e_lfanew = 0x80
    dos = dos_header(e_lfanew)
    stub = bytearray(e_lfanew - 64)
    if rich:
        stub[0x20:0x28] = b"Rich\x11\x22\x33\x44"
    optional_size = 240 if pe32_plus else 224
    code = b"\x55\x48\x89\xe5\x31\xc0\x5d\xc3" * 16
    idata = import_section(0x2000, pe32_plus)
    rsrc = resource_section(0x3000)
    sections = [
        (b".text", code, 0x1000, 0x6000_0020),
        (b".idata", idata, 0x2000, 0xC000_0040),
        (b".rsrc", rsrc, 0x3000, 0x4000_0040),
    ]
    headers_size = FILE_ALIGNMENT
    table = b""
    raw = b""
    pointer = headers_size
    for name, data, va, flags in sections:
        padded = data + bytes(-len(data) % FILE_ALIGNMENT)
        table += section(name, len(data), va, len(padded), pointer, flags)
        raw += padded
        pointer += len(padded)
    machine = 0x8664 if pe32_plus else 0x14C
    characteristics = 0x0022 if pe32_plus else 0x0102
    coff = struct.pack("<HHIIIHH", machine, len(sections), 0x5F000000, 0, 0, optional_size, characteristics)
    magic = 0x20B if pe32_plus else 0x10B
    std = struct.pack("<HBBIIIII", magic, 14, 29, len(code), 0x400, 0, 0x1000, 0x1000)
    if pe32_plus:
        std += struct.pack("<Q", 0x1_4000_0000)
    else:
        std += struct.pack("<II", 0x2000, 0x40_0000)
    windows = struct.pack(
        "<IIHHHHHHIIIIHH", SECTION_ALIGNMENT, FILE_ALIGNMENT, 6, 0, 1, 2, 6, 0, 0, 0x4000, headers_size, 0, 3, 0x8160
    )
    stack = struct.pack("<QQQQ" if pe32_plus else "<IIII", 0x100000, 0x1000, 0x100000, 0x1000)
    directories = bytearray(16 * 8)
    struct.pack_into("<II", directories, 1 * 8, 0x2000, 40)  # import
    struct.pack_into("<II", directories, 2 * 8, 0x3000, len(rsrc))  # resource
    optional = std + windows + stack + struct.pack("<II", 0, 16) + bytes(directories)
    assert len(optional) == optional_size, (len(optional), optional_size)
    headers = bytes(dos) + bytes(stub) + b"PE\0\0" + coff + optional + table
    headers += bytes(headers_size - len(headers))
    return headers + raw + overlay


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def main() -> None:
    pe32 = pe(False)
    pe64 = pe(True)
    nt = 0x80
    optional = nt + 24
    inputs = {
        "pe32_minimal": pe32,
        "pe32plus_minimal": pe64,
        "pe32_overlay": pe(False, overlay=bytes(range(256)) * 8, rich=False),
        "empty": b"",
        "text_file": b"hello, this is not an executable\n" * 4,
        "elf_header": b"\x7fELF\x02\x01\x01" + bytes(57),
        "dos_header_only": bytes(dos_header(0x40)),
        "zm_magic": b"ZM" + pe32[2:],
        "truncated_63": pe32[:63],
        "lfanew_past_end": patched(pe32, 0x3C, "<I", len(pe32) + 1),
        "lfanew_at_end": patched(pe32, 0x3C, "<I", len(pe32)),
        "ne_signature": patched(pe32, nt, "<I", 0x454E),
        "zero_signature": patched(pe32, nt, "<I", 0),
        "coff_cut": pe32[: nt + 4 + 10],
        "optional_header_68_bytes": pe32[: optional + 68],
        "optional_header_70_bytes_padded": pe32[: optional + 70],
        "pe32plus_optional_72_bytes": pe64[: optional + 72],
        "pe32plus_optional_80_bytes_padded": pe64[: optional + 80],
        "unknown_optional_magic": patched(pe32, optional, "<H", 0x107),
        "zeroed_optional_header": pe32[:optional] + bytes(224) + pe32[optional + 224 :],
        "section_table_cut": pe32[: optional + 224 + 40 + 17],
        "sections_count_huge": patched(pe32, nt + 6, "<H", 0xFFFF),
        "size_of_optional_header_zero": patched(pe32, nt + 20, "<H", 0),
        "image_base_above_2_53": patched(pe64, optional + 24, "<Q", 0xFFFF_FFFF_FFFF_F001),
        "resource_loop": patched(pe32, 0x600 + 16 + 4, "<I", 0x8000_0000),
        "import_thunks_bogus": patched(pe32, 0x400 + 40, "<I", 0x7FFF_FFF0),
    }
    for name, data in inputs.items():
        (HERE / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(inputs)} inputs to {HERE}")


if __name__ == "__main__":
    main()
