//! The request commands of §1.1 and the analysis steps each one runs.
//!
//! Commands 1–6 are the legacy protocol's. [`Command::Options`] is this
//! implementation's connection-level extension (see `docs/protocol.md`): a
//! value no legacy client sends and no legacy server knows, so a legacy server
//! answers it with a plain `No` and the client knows not to opt in.

use std::fmt;

/// What a request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// 1: static analysis of the executable.
    StaticAnalyse,
    /// 2: dynamic (behavioural) analysis.
    DynamicAnalyse,
    /// 3: VirusTotal analysis with the client's API key.
    VtAnalyse,
    /// 4: static, then VirusTotal.
    StaticAnalyseWithVt,
    /// 5: dynamic, then VirusTotal.
    DynamicAnalyseWithVt,
    /// 6: static, then dynamic, then VirusTotal.
    AllAnalyse,
    /// 100: connection options (the opt-in extension). Each field names an
    /// option to turn on for the rest of the connection.
    Options,
}

/// One analysis step; combined commands run several, in [`Command::analyses`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Analysis {
    Static,
    Dynamic,
    VirusTotal,
}

impl Command {
    /// Every command, in wire-value order.
    pub const ALL: [Command; 7] = [
        Command::StaticAnalyse,
        Command::DynamicAnalyse,
        Command::VtAnalyse,
        Command::StaticAnalyseWithVt,
        Command::DynamicAnalyseWithVt,
        Command::AllAnalyse,
        Command::Options,
    ];

    /// The command for a wire value, `None` for values this side does not know.
    pub fn from_wire(value: u32) -> Option<Command> {
        Command::ALL.into_iter().find(|command| command.wire() == value)
    }

    /// The `u32` that opens a request frame for this command.
    pub fn wire(self) -> u32 {
        match self {
            Command::StaticAnalyse => 1,
            Command::DynamicAnalyse => 2,
            Command::VtAnalyse => 3,
            Command::StaticAnalyseWithVt => 4,
            Command::DynamicAnalyseWithVt => 5,
            Command::AllAnalyse => 6,
            Command::Options => 100,
        }
    }

    /// The name used in the specification, logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Command::StaticAnalyse => "Static_analyse",
            Command::DynamicAnalyse => "Dynamic_analyse",
            Command::VtAnalyse => "Vt_analyse",
            Command::StaticAnalyseWithVt => "Static_analyse_with_Vt",
            Command::DynamicAnalyseWithVt => "Dynamic_analyse_with_Vt",
            Command::AllAnalyse => "ALL_analyse",
            Command::Options => "Options",
        }
    }

    /// The analyses this command runs, in the order their scores appear in a
    /// `Yes` response (after the combined verdict).
    pub fn analyses(self) -> &'static [Analysis] {
        match self {
            Command::StaticAnalyse => &[Analysis::Static],
            Command::DynamicAnalyse => &[Analysis::Dynamic],
            Command::VtAnalyse => &[Analysis::VirusTotal],
            Command::StaticAnalyseWithVt => &[Analysis::Static, Analysis::VirusTotal],
            Command::DynamicAnalyseWithVt => &[Analysis::Dynamic, Analysis::VirusTotal],
            Command::AllAnalyse => &[Analysis::Static, Analysis::Dynamic, Analysis::VirusTotal],
            Command::Options => &[],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Analysis {
    /// The step name carried in error details and used in counters.
    pub fn name(self) -> &'static str {
        match self {
            Analysis::Static => "static",
            Analysis::Dynamic => "dynamic",
            Analysis::VirusTotal => "virustotal",
        }
    }

    /// The step for a name, `None` for names this side does not know.
    pub fn from_name(name: &str) -> Option<Analysis> {
        [Analysis::Static, Analysis::Dynamic, Analysis::VirusTotal].into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_unknown_values_are_rejected() {
        for command in Command::ALL {
            assert_eq!(Command::from_wire(command.wire()), Some(command));
        }
        for value in [0, 7, 99, 101, 1029, 1030, u32::MAX] {
            assert_eq!(Command::from_wire(value), None, "{value}");
        }
    }

    #[test]
    fn combined_commands_run_their_steps_in_the_specified_order() {
        assert_eq!(
            Command::AllAnalyse.analyses(),
            [Analysis::Static, Analysis::Dynamic, Analysis::VirusTotal]
        );
        assert_eq!(Command::DynamicAnalyseWithVt.analyses(), [Analysis::Dynamic, Analysis::VirusTotal]);
        assert_eq!(Analysis::from_name("virustotal"), Some(Analysis::VirusTotal));
    }
}
