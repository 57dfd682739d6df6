//! Synthetic PE files of any size, for exercising a running server (the load
//! generator of `sentinel bench server` and the tests): a well-formed PE32
//! header with `.text` and `.data` sections, padded with pseudo-random bytes
//! (half in `.data`, the rest as overlay) so that sizes from kilobytes to tens
//! of megabytes parse the way real executables do.

const FILE_ALIGNMENT: usize = 0x200;
const SECTION_ALIGNMENT: u32 = 0x1000;
const HEADERS_SIZE: usize = 0x400;
const PE_OFFSET: usize = 0x80;
/// The smallest file built: headers plus one aligned block per section.
pub const MIN_SYNTHETIC_PE_SIZE: usize = HEADERS_SIZE + 2 * FILE_ALIGNMENT;

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn aligned(size: usize, alignment: usize) -> usize {
    size.div_ceil(alignment) * alignment
}

/// A PE file of exactly `size` bytes (at least [`MIN_SYNTHETIC_PE_SIZE`]);
/// `seed` varies the padding, hence the SHA-256.
pub fn synthetic_pe(size: usize, seed: u64) -> Vec<u8> {
    let size = size.max(MIN_SYNTHETIC_PE_SIZE);
    let text_size = FILE_ALIGNMENT;
    let data_size = ((size - HEADERS_SIZE - text_size) / 2 / FILE_ALIGNMENT).max(1) * FILE_ALIGNMENT;
    let mut pe = vec![0u8; size];

    // DOS header: "MZ", the usual DOS values, e_lfanew.
    pe[0..2].copy_from_slice(b"MZ");
    for (at, value) in [(2, 0x90), (4, 3), (8, 4), (12, 0xffff), (16, 0xb8), (24, 0x40)] {
        put_u16(&mut pe, at, value);
    }
    put_u32(&mut pe, 0x3c, PE_OFFSET as u32);

    // COFF header: i386, two sections, executable image.
    let coff = PE_OFFSET + 4;
    pe[PE_OFFSET..coff].copy_from_slice(b"PE\0\0");
    put_u16(&mut pe, coff, 0x14c);
    put_u16(&mut pe, coff + 2, 2);
    put_u32(&mut pe, coff + 4, 0x6000_0000 ^ (seed as u32 & 0xffff));
    put_u16(&mut pe, coff + 16, 0xe0);
    put_u16(&mut pe, coff + 18, 0x0102);

    // PE32 optional header.
    let optional = coff + 20;
    let image_size = SECTION_ALIGNMENT as usize * 3 + aligned(data_size, SECTION_ALIGNMENT as usize);
    put_u16(&mut pe, optional, 0x10b);
    pe[optional + 2] = 14;
    put_u32(&mut pe, optional + 4, text_size as u32);
    put_u32(&mut pe, optional + 8, data_size as u32);
    put_u32(&mut pe, optional + 16, 0x1000); // AddressOfEntryPoint
    put_u32(&mut pe, optional + 20, 0x1000); // BaseOfCode
    put_u32(&mut pe, optional + 24, 0x2000); // BaseOfData
    put_u32(&mut pe, optional + 28, 0x0040_0000); // ImageBase
    put_u32(&mut pe, optional + 32, SECTION_ALIGNMENT);
    put_u32(&mut pe, optional + 36, FILE_ALIGNMENT as u32);
    put_u16(&mut pe, optional + 40, 6); // MajorOperatingSystemVersion
    put_u16(&mut pe, optional + 48, 6); // MajorSubsystemVersion
    put_u32(&mut pe, optional + 56, image_size as u32);
    put_u32(&mut pe, optional + 60, HEADERS_SIZE as u32);
    put_u16(&mut pe, optional + 68, 3); // console subsystem
    put_u16(&mut pe, optional + 70, 0x8140); // DllCharacteristics: NX, dynamic base, TS aware
    put_u32(&mut pe, optional + 72, 0x10_0000);
    put_u32(&mut pe, optional + 76, 0x1000);
    put_u32(&mut pe, optional + 80, 0x10_0000);
    put_u32(&mut pe, optional + 84, 0x1000);
    put_u32(&mut pe, optional + 92, 16); // NumberOfRvaAndSizes

    // Section table.
    let sections = optional + 0xe0;
    let table = [
        (b".text\0\0\0", text_size, 0x1000u32, HEADERS_SIZE, 0x6000_0020u32),
        (b".data\0\0\0", data_size, 0x2000u32, HEADERS_SIZE + text_size, 0xc000_0040u32),
    ];
    for (index, (name, raw_size, address, offset, characteristics)) in table.into_iter().enumerate() {
        let at = sections + index * 40;
        pe[at..at + 8].copy_from_slice(name);
        put_u32(&mut pe, at + 8, raw_size as u32);
        put_u32(&mut pe, at + 12, address);
        put_u32(&mut pe, at + 16, raw_size as u32);
        put_u32(&mut pe, at + 20, offset as u32);
        put_u32(&mut pe, at + 36, characteristics);
    }

    // Code: a `ret`; then pseudo-random data and overlay (xorshift64*).
    pe[HEADERS_SIZE] = 0xc3;
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in pe[HEADERS_SIZE + text_size..].chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    pe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_the_requested_size_and_parse_as_pe() {
        for size in [0, 10 * 1024, 1_000_003] {
            let pe = synthetic_pe(size, 7);
            assert_eq!(pe.len(), size.max(MIN_SYNTHETIC_PE_SIZE));
            let features = sentinel_pe::pe_header_features(&pe).expect("a PE file");
            assert_eq!(features[17], 2.0, "NumberOfSections");
        }
        assert_ne!(synthetic_pe(4096, 1), synthetic_pe(4096, 2));
    }
}
