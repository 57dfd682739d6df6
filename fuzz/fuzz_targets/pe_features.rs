//! Fuzz target for the PE feature extractors: any bytes must give features or a `PeError`,
//! never a panic, a hang or an unbounded allocation, and both schemas must agree on which
//! files are PE files and give vectors of their documented lengths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel_pe::{PE_HEADER_COLUMNS, PE_RICH_COLUMNS, pe_header_features, pe_header_values, pe_rich_features};

fuzz_target!(|data: &[u8]| {
    let header = pe_header_features(data);
    let rich = pe_rich_features(data);
    assert_eq!(header.is_ok(), rich.is_ok(), "the schemas disagree on what is a PE file");
    if let (Ok(header), Ok(rich)) = (&header, &rich) {
        assert_eq!(header.len(), PE_HEADER_COLUMNS.len());
        assert_eq!(rich.len(), PE_RICH_COLUMNS.len());
        assert!(rich.iter().all(|v| v.is_finite()), "non-finite pe-rich feature");
        let exact = pe_header_values(data).expect("accepted above");
        assert!(header.iter().zip(exact).all(|(f, v)| *f == v as f64));
    }
});
