//! The tables the commands print, in one of two plain-text styles: Markdown for
//! the benches (their output goes into docs/benchmarks.md as printed) and
//! borderless columns for listings such as `scan`. Numeric columns are aligned
//! right; comfy-table sizes every column to its widest cell, header included.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// How a table is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Style {
    /// `| a | b |` rows under a `|---|` rule.
    Markdown,
    /// Columns separated by spaces, no rules.
    Columns,
}

/// An empty table with `header`; the columns whose indices are in `numeric`
/// are aligned right.
pub fn new(style: Style, header: &[&str], numeric: &[usize]) -> Table {
    let mut table = Table::new();
    table.load_style(match style {
        Style::Markdown => presets::ASCII_MARKDOWN,
        Style::Columns => presets::NOTHING,
    });
    // Never wrap cells to a terminal width: the output is also read by programs and pasted into docs.
    table.set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(header.iter().copied());
    for &index in numeric {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_with_the_header() {
        let mut table = new(Style::Markdown, &["size KiB", "p50 ms"], &[0, 1]);
        table.add_row(["10", "0.25"]);
        table.add_row(["20480", "157.70"]);
        let text = table.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Every line has its column separators at the same places.
        let bars = |line: &str| line.match_indices('|').map(|(at, _)| at).collect::<Vec<_>>();
        assert!(lines.iter().all(|line| bars(line) == bars(lines[0])), "{text}");
        assert!(lines[2].contains("|       10 |"), "{text}");
    }
}
