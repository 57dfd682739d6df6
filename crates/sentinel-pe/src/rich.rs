//! The `pe-rich` schema: features of a whole PE file (sections, imports, exports, resources,
//! overlay, data directories, byte statistics) for classifiers trained on Sentinel's own samples.
//!
//! A file is accepted exactly when the `pe-header` schema accepts it (pefile's rules), so both
//! schemas agree on what is a PE. goblin parses the section table; the data directories are
//! walked here, by hand, because goblin bounds their counts only by the file's length (a few
//! hundred import descriptors may all point at one huge thunk list: quadratic time), while a
//! malware scanner needs fixed caps. Every walk below has one, and a table that breaks a cap or
//! points outside the file simply stops contributing: hostile files are still scored.
//!
//! One file above 500 lines, on purpose: every walk of untrusted tables and its cap stand side by
//! side, so that the caps can be audited together.

use goblin::pe::section_table::SectionTable;

use crate::PeError;
use crate::byte_statistics::ByteCounts;
use crate::header::pe_header_values;

/// The `pe-rich` columns, in the order of [`pe_rich_features`]'s values.
pub const PE_RICH_COLUMNS: &[&str] = &[
    "file_size",
    "file_entropy",
    "is_pe32_plus",
    "machine",
    "coff_characteristics",
    "dll_characteristics",
    "subsystem",
    "timestamp",
    "size_of_image",
    "size_of_headers",
    "size_of_code",
    "has_rich_header",
    "section_count",
    "section_raw_size_total",
    "section_virtual_size_total",
    "section_entropy_min",
    "section_entropy_mean",
    "section_entropy_max",
    "sections_executable",
    "sections_writable",
    "sections_write_execute",
    "sections_virtual_only",
    "sections_nonstandard_name",
    "sections_packer_name",
    "entry_point_outside_sections",
    "entry_point_section_index",
    "entry_point_section_executable",
    "entry_point_section_entropy",
    "entry_point_in_last_section",
    "import_dll_count",
    "import_function_count",
    "import_ordinal_count",
    "import_name_bucket_00",
    "import_name_bucket_01",
    "import_name_bucket_02",
    "import_name_bucket_03",
    "import_name_bucket_04",
    "import_name_bucket_05",
    "import_name_bucket_06",
    "import_name_bucket_07",
    "import_name_bucket_08",
    "import_name_bucket_09",
    "import_name_bucket_10",
    "import_name_bucket_11",
    "import_name_bucket_12",
    "import_name_bucket_13",
    "import_name_bucket_14",
    "import_name_bucket_15",
    "api_process_injection",
    "api_dynamic_loading",
    "api_anti_debug",
    "api_cryptography",
    "api_network",
    "api_registry",
    "api_keyboard_hooks",
    "api_process_execution",
    "api_privileges",
    "export_function_count",
    "export_name_count",
    "resource_count",
    "resource_total_size",
    "resource_max_size",
    "resource_entropy",
    "overlay_size",
    "overlay_entropy",
    "has_debug",
    "has_tls",
    "has_relocations",
    "has_signature",
    "has_clr",
    "has_load_config",
    "has_delay_imports",
    "data_directories_nonzero",
    "byte_hist_00",
    "byte_hist_01",
    "byte_hist_02",
    "byte_hist_03",
    "byte_hist_04",
    "byte_hist_05",
    "byte_hist_06",
    "byte_hist_07",
    "byte_hist_08",
    "byte_hist_09",
    "byte_hist_10",
    "byte_hist_11",
    "byte_hist_12",
    "byte_hist_13",
    "byte_hist_14",
    "byte_hist_15",
];

const IMPORT_NAME_BUCKETS: usize = 16;
const BYTE_HISTOGRAM_BUCKETS: usize = 16;

/// Windows loads at most 96 sections; a table claiming more is hostile or broken.
const MAX_SECTIONS: usize = 96;
const MAX_IMPORT_DLLS: usize = 1024;
const MAX_IMPORTS_PER_DLL: usize = 8192;
const MAX_IMPORTS_TOTAL: usize = 65_536;
const MAX_NAME_LEN: usize = 256;
/// Resource trees are type / name / language: three levels of directories.
const MAX_RESOURCE_DEPTH: usize = 3;
const MAX_RESOURCE_ENTRIES: usize = 16_384;

const SCN_MEM_EXECUTE: u32 = 0x2000_0000;
const SCN_MEM_WRITE: u32 = 0x8000_0000;
const SCN_CNT_CODE: u32 = 0x0000_0020;

const DIR_EXPORT: usize = 0;
const DIR_IMPORT: usize = 1;
const DIR_RESOURCE: usize = 2;
const DIR_SECURITY: usize = 4;
const DIR_BASERELOC: usize = 5;
const DIR_DEBUG: usize = 6;
const DIR_TLS: usize = 9;
const DIR_LOAD_CONFIG: usize = 10;
const DIR_DELAY_IMPORT: usize = 13;
const DIR_CLR: usize = 14;

/// Names the usual linkers (MSVC, GNU ld, LLVM lld, Go, Delphi) give sections. Anything else
/// is counted by `sections_nonstandard_name`.
const STANDARD_SECTION_NAMES: &[&str] = &[
    ".text", ".data", ".rdata", ".bss", ".idata", ".edata", ".rsrc", ".reloc", ".pdata", ".tls", ".CRT",
    ".didat", ".gfids", ".00cfg", ".xdata", ".debug", ".symtab", ".buildid", ".textbss", ".gehcont",
    ".retplne", ".voltbl", ".fptable", ".sdata", ".ndata", "CODE", "DATA", "BSS", ".itext", ".init", ".fini",
    ".eh_fram", ".ctors", ".dtors", ".rodata", ".orpc", "INIT", "PAGE", ".cormeta", ".sxdata",
];

/// Name prefixes of sections added by well-known packers and protectors.
const PACKER_SECTION_PREFIXES: &[&str] = &[
    "UPX", ".UPX", ".aspack", ".adata", ".vmp", ".themida", ".petite", "MPRESS", ".MPRESS", ".nsp",
    ".enigma", ".packed", "pec", ".perplex", ".spack", ".winapi", ".yP", ".boom", "PEPACK",
];

/// Groups of imported functions that malware analysts look for, by name prefix (so that the
/// `A`/`W`/`Ex` variants all count). Each group's feature is how many imports fall in it.
const API_GROUPS: [&[&str]; 9] = [
    // Process injection and hollowing.
    &[
        "VirtualAllocEx",
        "WriteProcessMemory",
        "CreateRemoteThread",
        "NtUnmapViewOfSection",
        "ZwUnmapViewOfSection",
        "SetThreadContext",
        "QueueUserAPC",
        "NtWriteVirtualMemory",
        "RtlCreateUserThread",
    ],
    // Resolving functions at run time (hides the real imports).
    &["LoadLibrary", "GetProcAddress", "LdrLoadDll", "LdrGetProcedureAddress", "GetModuleHandle"],
    // Debugger detection.
    &[
        "IsDebuggerPresent",
        "CheckRemoteDebuggerPresent",
        "NtQueryInformationProcess",
        "OutputDebugString",
        "NtSetInformationThread",
    ],
    // Cryptography (ransomware, encrypted payloads).
    &["Crypt", "BCrypt", "NCrypt"],
    // Network.
    &[
        "WSAStartup",
        "socket",
        "connect",
        "InternetOpen",
        "InternetConnect",
        "HttpSendRequest",
        "HttpOpenRequest",
        "URLDownloadToFile",
        "WinHttp",
        "gethostbyname",
        "getaddrinfo",
    ],
    // Registry writes (persistence).
    &["RegSetValue", "RegCreateKey", "RegDeleteKey", "RegDeleteValue"],
    // Keyboard and window hooks (keyloggers).
    &["SetWindowsHookEx", "GetAsyncKeyState", "GetKeyState", "GetKeyboardState", "RegisterRawInputDevices"],
    // Starting processes and services.
    &["CreateProcess", "ShellExecute", "WinExec", "CreateService", "OpenSCManager", "StartService"],
    // Privileges and tokens.
    &["AdjustTokenPrivileges", "OpenProcessToken", "LookupPrivilegeValue", "ImpersonateLoggedOnUser"],
];

/// The `pe-rich` features of a file, in [`PE_RICH_COLUMNS`] order.
///
/// Rejects exactly what [`crate::pe_header_features`] rejects; any accepted file gets a full
/// vector (a table that cannot be read contributes zeros).
pub fn pe_rich_features(bytes: &[u8]) -> Result<Vec<f64>, PeError> {
    let header = pe_header_values(bytes)?;
    let layout = Layout::read(bytes);
    let mut features = Vec::with_capacity(PE_RICH_COLUMNS.len());

    let whole = ByteCounts::of(bytes);
    features.push(bytes.len() as f64);
    features.push(whole.entropy());
    features.push(f64::from(u8::from(layout.pe32_plus)));
    features.push(f64::from(layout.machine));
    features.push(header[column("Characteristics")] as f64);
    features.push(header[column("DllCharacteristics")] as f64);
    features.push(header[column("Subsystem")] as f64);
    features.push(f64::from(layout.timestamp));
    features.push(header[column("SizeOfImage")] as f64);
    features.push(header[column("SizeOfHeaders")] as f64);
    features.push(header[column("SizeOfCode")] as f64);
    features.push(f64::from(u8::from(has_rich_header(bytes, layout.nt_offset))));

    push_section_features(&mut features, bytes, &layout);
    push_import_features(&mut features, bytes, &layout);
    push_export_features(&mut features, bytes, &layout);
    push_resource_features(&mut features, bytes, &layout);
    push_overlay_features(&mut features, bytes, &layout);

    for dir in [DIR_DEBUG, DIR_TLS, DIR_BASERELOC, DIR_SECURITY, DIR_CLR, DIR_LOAD_CONFIG, DIR_DELAY_IMPORT] {
        features.push(f64::from(u8::from(layout.directory(dir).is_some())));
    }
    let nonzero = (0..layout.directories.len()).filter(|&i| layout.directory(i).is_some()).count();
    features.push(nonzero as f64);
    features.extend(whole.histogram::<BYTE_HISTOGRAM_BUCKETS>());

    debug_assert_eq!(features.len(), PE_RICH_COLUMNS.len());
    Ok(features)
}

fn column(name: &str) -> usize {
    crate::PE_HEADER_COLUMNS.iter().position(|&c| c == name).unwrap_or_else(|| unreachable!("{name}"))
}

/// The parts of the headers the rich features navigate by. Built only for files the header
/// schema accepted, so the DOS header, signature and COFF header are known to be present.
struct Layout {
    nt_offset: usize,
    machine: u16,
    timestamp: u32,
    pe32_plus: bool,
    entry_point: u32,
    size_of_headers: u32,
    directories: Vec<(u32, u32)>,
    sections: Vec<SectionTable>,
}

impl Layout {
    fn read(bytes: &[u8]) -> Self {
        let nt_offset = read_u32(bytes, 0x3C).unwrap_or(0) as usize;
        let coff = nt_offset + 4;
        let number_of_sections = usize::from(read_u16(bytes, coff + 2).unwrap_or(0));
        let pointer_to_symbols = read_u32(bytes, coff + 8).unwrap_or(0) as usize;
        let number_of_symbols = read_u32(bytes, coff + 12).unwrap_or(0) as usize;
        let optional_size = usize::from(read_u16(bytes, coff + 16).unwrap_or(0));
        let optional = coff + 20;
        let pe32_plus = read_u16(bytes, optional) == Some(0x20B);
        let (directory_count_at, directories_at) = if pe32_plus { (108, 112) } else { (92, 96) };
        // Like the Windows loader, trust at most 16 directories and only those inside the
        // optional header's declared size.
        let declared = read_u32(bytes, optional + directory_count_at).unwrap_or(0) as usize;
        let room = optional_size.saturating_sub(directories_at) / 8;
        let directories = (0..declared.min(16).min(room))
            .map(|i| {
                let at = optional + directories_at + 8 * i;
                (read_u32(bytes, at).unwrap_or(0), read_u32(bytes, at + 4).unwrap_or(0))
            })
            .collect();

        // COFF symbols are 18 bytes each; the string table (long section names) follows them.
        let string_table = pointer_to_symbols.saturating_add(number_of_symbols.saturating_mul(18));
        let mut offset = optional + optional_size;
        let mut sections = Vec::new();
        for _ in 0..number_of_sections.min(MAX_SECTIONS) {
            match SectionTable::parse(bytes, &mut offset, string_table) {
                Ok(section) => sections.push(section),
                Err(_) => break,
            }
        }
        Self {
            nt_offset,
            machine: read_u16(bytes, coff).unwrap_or(0),
            timestamp: read_u32(bytes, coff + 4).unwrap_or(0),
            pe32_plus,
            entry_point: read_u32(bytes, optional + 16).unwrap_or(0),
            size_of_headers: read_u32(bytes, optional + 60).unwrap_or(0),
            directories,
            sections,
        }
    }

    /// A data directory's (RVA, size), when it is present (both non-zero), except for the
    /// security directory whose "RVA" is a file offset.
    fn directory(&self, index: usize) -> Option<(u32, u32)> {
        self.directories.get(index).copied().filter(|&(rva, size)| rva != 0 && size != 0)
    }

    fn section_containing(&self, rva: u32) -> Option<usize> {
        self.sections.iter().position(|s| {
            let span = s.virtual_size.max(s.size_of_raw_data);
            rva >= s.virtual_address && u64::from(rva) < u64::from(s.virtual_address) + u64::from(span)
        })
    }

    /// The file offset of an RVA, when it maps into the file.
    fn offset_of(&self, bytes: &[u8], rva: u32) -> Option<usize> {
        let offset = match self.section_containing(rva) {
            Some(index) => {
                let s = &self.sections[index];
                // The loader reads raw data from a 512-byte aligned pointer.
                let start = u64::from(s.pointer_to_raw_data & !0x1FF);
                let delta = u64::from(rva - s.virtual_address);
                if delta >= u64::from(s.size_of_raw_data) {
                    return None;
                }
                start + delta
            }
            None if rva < self.size_of_headers => u64::from(rva),
            None => return None,
        };
        usize::try_from(offset).ok().filter(|&o| o < bytes.len())
    }

    /// The bytes of a section's raw data that are inside the file.
    fn raw_data<'a>(&self, bytes: &'a [u8], section: &SectionTable) -> &'a [u8] {
        let start = (section.pointer_to_raw_data as usize).min(bytes.len());
        let end = start.saturating_add(section.size_of_raw_data as usize).min(bytes.len());
        &bytes[start..end]
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(b);
    Some(u64::from_le_bytes(word))
}

/// A NUL-terminated string of at most `MAX_NAME_LEN` bytes at a file offset.
fn read_name(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let tail = bytes.get(at..)?;
    let tail = &tail[..tail.len().min(MAX_NAME_LEN)];
    let end = tail.iter().position(|&b| b == 0)?;
    Some(&tail[..end])
}

/// MSVC's linker writes a "Rich" header (its build tools' signature) between the DOS stub and
/// the PE header; other toolchains do not, so its presence says a lot about the origin.
fn has_rich_header(bytes: &[u8], nt_offset: usize) -> bool {
    let region = bytes.get(0x40..nt_offset.min(bytes.len())).unwrap_or(&[]);
    region.windows(4).any(|w| w == b"Rich")
}

fn push_section_features(features: &mut Vec<f64>, bytes: &[u8], layout: &Layout) {
    let sections = &layout.sections;
    let entropies: Vec<f64> =
        sections.iter().map(|s| ByteCounts::of(layout.raw_data(bytes, s)).entropy()).collect();
    let count = sections.len() as f64;
    features.push(count);
    features.push(sections.iter().map(|s| f64::from(s.size_of_raw_data)).sum());
    features.push(sections.iter().map(|s| f64::from(s.virtual_size)).sum());
    features.push(entropies.iter().copied().reduce(f64::min).unwrap_or(0.0));
    features.push(if sections.is_empty() { 0.0 } else { entropies.iter().sum::<f64>() / count });
    features.push(entropies.iter().copied().reduce(f64::max).unwrap_or(0.0));
    let has = |s: &SectionTable, flag: u32| s.characteristics & flag != 0;
    let executable = |s: &SectionTable| has(s, SCN_MEM_EXECUTE) || has(s, SCN_CNT_CODE);
    let counted = |pred: &dyn Fn(&SectionTable) -> bool| sections.iter().filter(|s| pred(s)).count() as f64;
    features.push(counted(&executable));
    features.push(counted(&|s| has(s, SCN_MEM_WRITE)));
    features.push(counted(&|s| has(s, SCN_MEM_WRITE) && executable(s)));
    features.push(counted(&|s| s.size_of_raw_data == 0));
    features.push(counted(&|s| !STANDARD_SECTION_NAMES.contains(&section_name(s).as_str())));
    features.push(counted(&|s| {
        let name = section_name(s);
        PACKER_SECTION_PREFIXES.iter().any(|p| name.starts_with(p))
    }));

    match layout.section_containing(layout.entry_point) {
        Some(index) => {
            features.push(0.0);
            features.push(index as f64);
            features.push(f64::from(u8::from(executable(&sections[index]))));
            features.push(entropies[index]);
            features.push(f64::from(u8::from(index + 1 == sections.len())));
        }
        None => features.extend([1.0, -1.0, 0.0, 0.0, 0.0]),
    }
}

fn section_name(section: &SectionTable) -> String {
    match &section.real_name {
        Some(name) => name.clone(),
        None => {
            let end = section.name.iter().position(|&b| b == 0).unwrap_or(section.name.len());
            String::from_utf8_lossy(&section.name[..end]).into_owned()
        }
    }
}

fn push_import_features(features: &mut Vec<f64>, bytes: &[u8], layout: &Layout) {
    let mut dlls = 0usize;
    let mut functions = 0usize;
    let mut ordinals = 0usize;
    let mut buckets = [0.0f64; IMPORT_NAME_BUCKETS];
    let mut groups = [0.0f64; API_GROUPS.len()];
    let thunk_size = if layout.pe32_plus { 8 } else { 4 };
    let ordinal_flag = if layout.pe32_plus { 1u64 << 63 } else { 1u64 << 31 };

    let descriptors = layout.directory(DIR_IMPORT).and_then(|(rva, _)| layout.offset_of(bytes, rva));
    if let Some(mut descriptor) = descriptors {
        'dlls: for _ in 0..MAX_IMPORT_DLLS {
            let Some(entry) = bytes.get(descriptor..descriptor.saturating_add(20)) else { break };
            if entry.len() < 20 || entry.iter().all(|&b| b == 0) {
                break;
            }
            descriptor += 20;
            let original_first_thunk = read_u32(entry, 0).unwrap_or(0);
            let first_thunk = read_u32(entry, 16).unwrap_or(0);
            let dll_name = read_u32(entry, 12)
                .and_then(|rva| layout.offset_of(bytes, rva))
                .and_then(|at| read_name(bytes, at))
                .unwrap_or(b"");
            dlls += 1;
            let list = if original_first_thunk != 0 { original_first_thunk } else { first_thunk };
            let Some(mut thunk_at) = layout.offset_of(bytes, list) else { continue };
            for _ in 0..MAX_IMPORTS_PER_DLL {
                if functions >= MAX_IMPORTS_TOTAL {
                    break 'dlls;
                }
                let thunk = if layout.pe32_plus {
                    read_u64(bytes, thunk_at)
                } else {
                    read_u32(bytes, thunk_at).map(u64::from)
                };
                let Some(thunk) = thunk.filter(|&t| t != 0) else { break };
                thunk_at += thunk_size;
                functions += 1;
                if thunk & ordinal_flag != 0 {
                    ordinals += 1;
                    let mut key = dll_name.to_ascii_lowercase();
                    key.extend_from_slice(format!("#{}", thunk & 0xFFFF).as_bytes());
                    buckets[bucket_of(&key)] += 1.0;
                    continue;
                }
                // Hint/name entry: a 2-byte hint, then the name. Only the low 31 bits are an RVA.
                let name = u32::try_from(thunk & 0x7FFF_FFFF)
                    .ok()
                    .and_then(|rva| layout.offset_of(bytes, rva))
                    .and_then(|at| read_name(bytes, at.saturating_add(2)))
                    .unwrap_or(b"");
                buckets[bucket_of(&name.to_ascii_lowercase())] += 1.0;
                let name = String::from_utf8_lossy(name);
                for (group, prefixes) in groups.iter_mut().zip(API_GROUPS) {
                    if prefixes.iter().any(|p| name.starts_with(p)) {
                        *group += 1.0;
                    }
                }
            }
        }
    }
    features.push(dlls as f64);
    features.push(functions as f64);
    features.push(ordinals as f64);
    features.extend(buckets);
    features.extend(groups);
}

/// FNV-1a of the lower-cased name, reduced to a bucket: a fixed, documented hash so that the
/// feature means the same thing in every build and in the Python training code.
fn bucket_of(name: &[u8]) -> usize {
    let mut hash: u32 = 0x811C_9DC5;
    for &b in name {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize % IMPORT_NAME_BUCKETS
}

fn push_export_features(features: &mut Vec<f64>, bytes: &[u8], layout: &Layout) {
    let directory = layout.directory(DIR_EXPORT).and_then(|(rva, _)| layout.offset_of(bytes, rva));
    // Counts only: nothing is allocated from them.
    let (functions, names) = directory
        .map(|at| (read_u32(bytes, at + 20).unwrap_or(0), read_u32(bytes, at + 24).unwrap_or(0)))
        .unwrap_or((0, 0));
    features.push(f64::from(functions));
    features.push(f64::from(names));
}

fn push_resource_features(features: &mut Vec<f64>, bytes: &[u8], layout: &Layout) {
    let mut count = 0usize;
    let mut total = 0u64;
    let mut largest = 0u64;
    let mut content = ByteCounts::new();
    if let Some(base) = layout.directory(DIR_RESOURCE).and_then(|(rva, _)| layout.offset_of(bytes, rva)) {
        // Depth-first over (directory offset relative to base, depth), with the depth capped so
        // a directory that points back at itself cannot loop, and the entries capped in total.
        let mut pending = vec![(0usize, 1usize)];
        let mut visited = 0usize;
        // Entropy is computed over at most as many bytes as the file has, however many entries
        // point at the same large blob.
        let mut budget = bytes.len();
        while let Some((directory, depth)) = pending.pop() {
            let at = base.saturating_add(directory);
            let named = read_u16(bytes, at + 12).unwrap_or(0);
            let ids = read_u16(bytes, at + 14).unwrap_or(0);
            for i in 0..usize::from(named) + usize::from(ids) {
                visited += 1;
                if visited > MAX_RESOURCE_ENTRIES {
                    pending.clear();
                    break;
                }
                let Some(target) = read_u32(bytes, at + 16 + 8 * i + 4) else { break };
                let target_offset = (target & 0x7FFF_FFFF) as usize;
                if target & 0x8000_0000 != 0 {
                    if depth < MAX_RESOURCE_DEPTH {
                        pending.push((target_offset, depth + 1));
                    }
                    continue;
                }
                let data_entry = base.saturating_add(target_offset);
                let (Some(data_rva), Some(size)) =
                    (read_u32(bytes, data_entry), read_u32(bytes, data_entry + 4))
                else {
                    continue;
                };
                count += 1;
                total += u64::from(size);
                largest = largest.max(u64::from(size));
                if let Some(start) = layout.offset_of(bytes, data_rva) {
                    let end = start.saturating_add(size as usize).min(bytes.len());
                    let take = (end - start).min(budget);
                    content.add(&bytes[start..start + take]);
                    budget -= take;
                }
            }
        }
    }
    features.push(count as f64);
    features.push(total as f64);
    features.push(largest as f64);
    features.push(content.entropy());
}

fn push_overlay_features(features: &mut Vec<f64>, bytes: &[u8], layout: &Layout) {
    // The overlay is what follows the end of the last section's raw data: installers' archives,
    // signatures, appended payloads.
    let end_of_sections = layout
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data))
        .max();
    let overlay = match end_of_sections {
        Some(end) if end < bytes.len() as u64 => &bytes[end as usize..],
        _ => &[][..],
    };
    let counts = ByteCounts::of(overlay);
    features.push(counts.total() as f64);
    features.push(counts.entropy());
}

#[cfg(test)]
mod tests {
    use super::{PE_RICH_COLUMNS, bucket_of};

    #[test]
    fn columns_are_unique() {
        let mut names = PE_RICH_COLUMNS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PE_RICH_COLUMNS.len());
    }

    #[test]
    fn import_bucket_is_fnv1a_mod_16() {
        // FNV-1a 32 of "" is the offset basis 0x811c9dc5; of "a" it is 0xe40c292c.
        assert_eq!(bucket_of(b""), 0x811C_9DC5 % 16);
        assert_eq!(bucket_of(b"a"), 0xE40C_292C % 16);
    }
}
