//! The `pe-header` schema: the 50 DOS, COFF and optional header fields of the public
//! `pe_header_dataset.csv`, with exactly the values and the accept/reject decisions of Python's
//! `pefile` (2024.8.26, `pefile.PE(data=…, fast_load=True)`), so that a model trained on that data
//! set sees the same numbers in production as it saw in training.
//!
//! The parse is written by hand rather than with goblin because pefile is, on purpose, far more
//! lenient than goblin (it zero-pads a truncated optional header, ignores the optional header's
//! declared size when reading it, accepts an unknown optional header magic…) and stricter in one
//! odd place (a section table cut in the middle of an entry). Every read is bounds-checked and the
//! only loop, over the section table, is capped like pefile's (`MAX_SECTIONS`).

use crate::PeError;

/// The feature columns of `pe_header_dataset.csv`, in its order (every column but `Malware`).
pub const PE_HEADER_COLUMNS: [&str; 50] = [
    "e_magic",
    "e_cblp",
    "e_cp",
    "e_crlc",
    "e_cparhdr",
    "e_minalloc",
    "e_maxalloc",
    "e_ss",
    "e_sp",
    "e_csum",
    "e_ip",
    "e_cs",
    "e_lfarlc",
    "e_ovno",
    "e_oemid",
    "e_oeminfo",
    "e_lfanew",
    "NumberOfSections",
    "PointerToSymbolTable",
    "NumberOfSymbols",
    "SizeOfOptionalHeader",
    "Characteristics",
    "Magic",
    "MajorLinkerVersion",
    "MinorLinkerVersion",
    "SizeOfCode",
    "SizeOfInitializedData",
    "SizeOfUninitializedData",
    "AddressOfEntryPoint",
    "BaseOfCode",
    "ImageBase",
    "SectionAlignment",
    "FileAlignment",
    "MajorOperatingSystemVersion",
    "MinorOperatingSystemVersion",
    "MajorImageVersion",
    "MinorImageVersion",
    "MajorSubsystemVersion",
    "MinorSubsystemVersion",
    "SizeOfHeaders",
    "CheckSum",
    "SizeOfImage",
    "Subsystem",
    "DllCharacteristics",
    "SizeOfStackReserve",
    "SizeOfStackCommit",
    "SizeOfHeapReserve",
    "SizeOfHeapCommit",
    "LoaderFlags",
    "NumberOfRvaAndSizes",
];

const DOS_HEADER_SIZE: usize = 64;
const FILE_HEADER_SIZE: usize = 20;
const SECTION_HEADER_SIZE: usize = 40;
/// pefile stops reading the section table after this many entries.
const MAX_SECTIONS: u64 = 0x800;
/// pefile zero-pads an optional header shorter than its structure when at least this many
/// bytes of it are present (69 for PE32, 73 for PE32+): the Windows loader needs nothing past
/// `Subsystem`.
const MIN_OPTIONAL_HEADER_PE32: usize = 69;
const MIN_OPTIONAL_HEADER_PE32_PLUS: usize = 73;
/// Size of the larger (PE32+) optional header structure; PE32's is 96 bytes.
const OPTIONAL_HEADER_PE32_PLUS_SIZE: usize = 112;
/// pefile never looks at more than this many bytes of optional header.
const OPTIONAL_HEADER_WINDOW: usize = 0x200;

const MAGIC_MZ: u16 = 0x5A4D;
const MAGIC_ZM: u16 = 0x4D5A;
const SIGNATURE_PE: u32 = 0x0000_4550;
const SIGNATURE_NE: u32 = 0x454E;
const SIGNATURE_LE: u32 = 0x454C;
const SIGNATURE_LX: u32 = 0x584C;
const SIGNATURE_TE: u32 = 0x5A56;
const OPTIONAL_MAGIC_PE32_PLUS: u16 = 0x20B;

/// Little-endian reads at fixed offsets; a field past the end of the slice reads as zero.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&self, at: usize) -> u64 {
        self.0.get(at).copied().map_or(0, u64::from)
    }
    fn u16(&self, at: usize) -> u64 {
        self.0.get(at..at + 2).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])))
    }
    fn u32(&self, at: usize) -> u64 {
        self.0.get(at..at + 4).map_or(0, |b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }
    fn u64(&self, at: usize) -> u64 {
        self.0.get(at..at + 8).map_or(0, |b| {
            let mut word = [0u8; 8];
            word.copy_from_slice(b);
            u64::from_le_bytes(word)
        })
    }
}

/// `data[start..start + len]` clipped to the data, like a Python slice.
fn window(data: &[u8], start: usize, len: usize) -> &[u8] {
    let start = start.min(data.len());
    let end = start.saturating_add(len).min(data.len());
    &data[start..end]
}

/// The 50 header values as exact integers, in [`PE_HEADER_COLUMNS`] order.
///
/// [`pe_header_features`] is this as `f64`; the integers are kept for the places where the
/// exact value matters (PE32+ `ImageBase` and stack sizes are 64-bit and an `f64` rounds
/// values above 2^53).
pub fn pe_header_values(bytes: &[u8]) -> Result<[u64; 50], PeError> {
    if bytes.len() < DOS_HEADER_SIZE {
        return Err(PeError::Truncated(format!(
            "{} bytes: a DOS header needs {DOS_HEADER_SIZE}",
            bytes.len()
        )));
    }
    let dos = Fields(&bytes[..DOS_HEADER_SIZE]);
    let e_magic = dos.u16(0);
    if e_magic == u64::from(MAGIC_ZM) {
        return Err(PeError::NotPe("'ZM' executable, not a PE file".into()));
    }
    if e_magic != u64::from(MAGIC_MZ) {
        return Err(PeError::NotPe(format!("no 'MZ' DOS signature (e_magic 0x{e_magic:04x})")));
    }
    let e_lfanew = dos.u32(0x3C);
    if e_lfanew > bytes.len() as u64 {
        return Err(PeError::Malformed(format!(
            "e_lfanew 0x{e_lfanew:x} points past the end of the {}-byte file",
            bytes.len()
        )));
    }
    // e_lfanew <= len fits in usize.
    let nt_offset = e_lfanew as usize;
    let signature_bytes = window(bytes, nt_offset, 4);
    if signature_bytes.len() < 4 {
        return Err(PeError::Truncated(format!("no room for the PE signature at 0x{nt_offset:x}")));
    }
    let signature = Fields(signature_bytes).u32(0);
    if signature == 0 {
        return Err(PeError::NotPe(format!("zero NT headers signature at 0x{nt_offset:x}")));
    }
    for (other, kind) in
        [(SIGNATURE_NE, "NE"), (SIGNATURE_LE, "LE"), (SIGNATURE_LX, "LX"), (SIGNATURE_TE, "TE")]
    {
        if signature & 0xFFFF == u64::from(other) {
            return Err(PeError::NotPe(format!("{kind} executable, not a PE file")));
        }
    }
    if signature != u64::from(SIGNATURE_PE) {
        return Err(PeError::NotPe(format!("invalid NT headers signature 0x{signature:08x}")));
    }

    let file_header_bytes = window(bytes, nt_offset + 4, FILE_HEADER_SIZE);
    if file_header_bytes.len() < FILE_HEADER_SIZE {
        return Err(PeError::Truncated(format!(
            "COFF file header at 0x{:x} is cut short ({} of {FILE_HEADER_SIZE} bytes)",
            nt_offset + 4,
            file_header_bytes.len()
        )));
    }
    let file = Fields(file_header_bytes);
    let number_of_sections = file.u16(2);
    let size_of_optional_header = file.u16(16);

    let optional_offset = nt_offset + 4 + FILE_HEADER_SIZE;
    let optional = window(bytes, optional_offset, OPTIONAL_HEADER_WINDOW);
    if optional.len() < MIN_OPTIONAL_HEADER_PE32 {
        return Err(PeError::Truncated(format!(
            "optional header at 0x{optional_offset:x} has {} bytes, at least \
             {MIN_OPTIONAL_HEADER_PE32} are needed",
            optional.len()
        )));
    }
    // pefile pads a short optional header with zeros, so a field cut by the end of the file
    // keeps its low bytes: copy what is there into a zeroed buffer of the full structure size.
    let mut padded = [0u8; OPTIONAL_HEADER_PE32_PLUS_SIZE];
    let present = optional.len().min(OPTIONAL_HEADER_PE32_PLUS_SIZE);
    padded[..present].copy_from_slice(&optional[..present]);
    let opt = Fields(&padded);
    let magic = opt.u16(0);
    // pefile reads an unknown magic as PE32 (with a warning); only PE32+ changes the layout.
    let pe32_plus = magic == u64::from(OPTIONAL_MAGIC_PE32_PLUS);
    if pe32_plus && optional.len() < MIN_OPTIONAL_HEADER_PE32_PLUS {
        return Err(PeError::Truncated(format!(
            "PE32+ optional header at 0x{optional_offset:x} has {} bytes, at least \
             {MIN_OPTIONAL_HEADER_PE32_PLUS} are needed",
            optional.len()
        )));
    }
    let (image_base, stack_reserve, stack_commit, heap_reserve, heap_commit, loader_flags, rva_count) =
        if pe32_plus {
            (opt.u64(24), opt.u64(72), opt.u64(80), opt.u64(88), opt.u64(96), opt.u32(104), opt.u32(108))
        } else {
            (opt.u32(28), opt.u32(72), opt.u32(76), opt.u32(80), opt.u32(84), opt.u32(88), opt.u32(92))
        };
    let section_alignment = opt.u32(32);
    let file_alignment = opt.u32(36);

    check_section_table(
        bytes,
        optional_offset as u64 + size_of_optional_header,
        number_of_sections,
        section_alignment,
        file_alignment,
    )?;

    Ok([
        e_magic,
        dos.u16(0x02),
        dos.u16(0x04),
        dos.u16(0x06),
        dos.u16(0x08),
        dos.u16(0x0A),
        dos.u16(0x0C),
        dos.u16(0x0E),
        dos.u16(0x10),
        dos.u16(0x12),
        dos.u16(0x14),
        dos.u16(0x16),
        dos.u16(0x18),
        dos.u16(0x1A),
        dos.u16(0x24),
        dos.u16(0x26),
        e_lfanew,
        number_of_sections,
        file.u32(8),
        file.u32(12),
        size_of_optional_header,
        file.u16(18),
        magic,
        opt.u8(2),
        opt.u8(3),
        opt.u32(4),
        opt.u32(8),
        opt.u32(12),
        opt.u32(16),
        opt.u32(20),
        image_base,
        section_alignment,
        file_alignment,
        opt.u16(40),
        opt.u16(42),
        opt.u16(44),
        opt.u16(46),
        opt.u16(48),
        opt.u16(50),
        opt.u32(60),
        opt.u32(64),
        opt.u32(56),
        opt.u16(68),
        opt.u16(70),
        stack_reserve,
        stack_commit,
        heap_reserve,
        heap_commit,
        loader_flags,
        rva_count,
    ])
}

/// The 50 `pe-header` features of a file, in [`PE_HEADER_COLUMNS`] order, as pefile reports them.
pub fn pe_header_features(bytes: &[u8]) -> Result<[f64; 50], PeError> {
    // u64 -> f64 rounds to nearest, ties to even, exactly as Python's float(int) does.
    Ok(pe_header_values(bytes)?.map(|value| value as f64))
}

/// Walk the section table the way pefile's `parse_sections` does, for its one way of rejecting
/// a file: an entry cut short by the end of the file. pefile stops at an all-zero entry, at the
/// end of the data, after `MAX_SECTIONS` entries, or at an entry with three of its sanity
/// warnings — so an entry cut short past any of those is not an error, and must not be here.
fn check_section_table(
    bytes: &[u8],
    table_offset: u64,
    number_of_sections: u64,
    section_alignment: u64,
    file_alignment: u64,
) -> Result<(), PeError> {
    let len = bytes.len() as u64;
    for index in 0..number_of_sections.min(MAX_SECTIONS) {
        let offset = table_offset + index * SECTION_HEADER_SIZE as u64;
        let entry = if offset >= len { &[][..] } else { window(bytes, offset as usize, SECTION_HEADER_SIZE) };
        if entry.len() == SECTION_HEADER_SIZE && entry.iter().all(|&b| b == 0) {
            break;
        }
        if entry.is_empty() {
            break;
        }
        if entry.len() < SECTION_HEADER_SIZE {
            return Err(PeError::Truncated(format!(
                "section header {index} at 0x{offset:x} is cut short ({} of {SECTION_HEADER_SIZE} bytes)",
                entry.len()
            )));
        }
        let section = Fields(entry);
        let virtual_size = section.u32(8);
        let virtual_address = section.u32(12);
        let size_of_raw_data = section.u32(16);
        let pointer_to_raw_data = section.u32(20);
        let warnings = [
            size_of_raw_data + pointer_to_raw_data > len,
            (pointer_to_raw_data & !0x1FF) > len,
            virtual_size > 0x1000_0000,
            aligned_virtual_address(virtual_address, section_alignment, file_alignment) > 0x1000_0000,
            file_alignment != 0 && !pointer_to_raw_data.is_multiple_of(file_alignment),
        ];
        if warnings.iter().filter(|&&w| w).count() >= 3 {
            break;
        }
    }
    Ok(())
}

/// pefile's `adjust_SectionAlignment`: the virtual address rounded down to the section
/// alignment, which falls back to the file alignment below the 4 KiB page size.
fn aligned_virtual_address(virtual_address: u64, section_alignment: u64, file_alignment: u64) -> u64 {
    let alignment = if section_alignment < 0x1000 { file_alignment } else { section_alignment };
    if alignment != 0 && !virtual_address.is_multiple_of(alignment) {
        alignment * (virtual_address / alignment)
    } else {
        virtual_address
    }
}
