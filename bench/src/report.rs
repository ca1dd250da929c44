//! The figures and their rendering as `BENCHMARKS.md`.

use std::fmt::Write as _;

use crate::stats::Samples;

/// What a row measures, and how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Wall time in milliseconds (lower is better).
    Millis,
    /// Throughput in MB/s, 10^6 bytes per second (higher is better).
    MegabytesPerSec,
    /// Operations per second (higher is better).
    PerSec,
    /// Memory in KiB (lower is better).
    KiB,
    /// Memory in MiB (lower is better).
    MiB,
}

impl Unit {
    fn format(self, value: f64) -> String {
        if value.is_nan() {
            return "–".into();
        }
        match self {
            Unit::Millis if value < 10.0 => format!("{value:.2} ms"),
            Unit::Millis => format!("{value:.1} ms"),
            Unit::MegabytesPerSec => format!("{value:.0} MB/s"),
            Unit::PerSec if value >= 1000.0 => format!("{:.1} k/s", value / 1000.0),
            Unit::PerSec => format!("{value:.0} /s"),
            Unit::KiB => format!("{value:.1} KiB"),
            Unit::MiB => format!("{value:.1} MiB"),
        }
    }

    fn bare(self, value: f64) -> String {
        if value.is_nan() {
            return "–".into();
        }
        match self {
            Unit::Millis if value < 10.0 => format!("{value:.2}"),
            Unit::Millis => format!("{value:.1}"),
            Unit::MegabytesPerSec => format!("{value:.0}"),
            Unit::PerSec if value >= 1000.0 => format!("{:.1}", value / 1000.0),
            Unit::PerSec => format!("{value:.0}"),
            Unit::KiB | Unit::MiB => format!("{value:.1}"),
        }
    }
}

/// One measured quantity.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) label: String,
    /// Its unit.
    pub(crate) unit: Unit,
    /// The repeated measurements.
    pub(crate) samples: Samples,
    /// The row (index in the figure) this one is compared with.
    pub(crate) baseline: Option<usize>,
}

/// A target of the issue and whether it was met.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The target, in words.
    pub(crate) target: String,
    /// What was measured against it.
    pub(crate) measured: String,
    /// Whether it was met; `None` when it could not be measured.
    pub(crate) met: Option<bool>,
}

/// One figure of the issue.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figure {
    /// Its title, with its number.
    pub(crate) title: String,
    /// How it was measured.
    pub(crate) setup: Vec<String>,
    /// The measurements.
    pub(crate) rows: Vec<Row>,
    /// The targets.
    pub(crate) targets: Vec<Target>,
    /// Baselines or rows that could not be measured, and why.
    pub(crate) missing: Vec<String>,
}

impl Figure {
    /// A figure with this title.
    pub(crate) fn new(title: &str) -> Self {
        Figure {
            title: title.into(),
            ..Figure::default()
        }
    }

    /// Adds a row and returns its index.
    pub(crate) fn row(
        &mut self,
        label: impl Into<String>,
        unit: Unit,
        samples: Samples,
        baseline: Option<usize>,
    ) -> usize {
        self.rows.push(Row {
            label: label.into(),
            unit,
            samples,
            baseline,
        });
        self.rows.len() - 1
    }

    /// The median of row `index`.
    pub(crate) fn median(&self, index: usize) -> f64 {
        self.rows
            .get(index)
            .map_or(f64::NAN, |row| row.samples.median())
    }

    /// The ratio of row `index`'s median to its baseline's.
    pub(crate) fn ratio(&self, index: usize) -> f64 {
        let baseline = self.rows.get(index).and_then(|row| row.baseline);
        match baseline {
            Some(baseline) => self.median(index) / self.median(baseline),
            None => f64::NAN,
        }
    }

    /// Adds a target; `met` is `None` when the value is not a number.
    pub(crate) fn target(
        &mut self,
        target: impl Into<String>,
        measured: String,
        met: Option<bool>,
    ) {
        self.targets.push(Target {
            target: target.into(),
            measured,
            met,
        });
    }

    /// The measured value of row `index`, formatted.
    pub(crate) fn shown(&self, index: usize) -> String {
        self.rows
            .get(index)
            .map_or_else(|| "–".into(), |row| row.unit.format(row.samples.median()))
    }
}

/// A ratio as `0.12×`.
pub(crate) fn times(ratio: f64) -> String {
    if ratio.is_nan() {
        "–".into()
    } else if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 0.1 {
        format!("{ratio:.2}×")
    } else {
        format!("{ratio:.3}×")
    }
}

/// `Some(test(value))`, or `None` for a value that was not measured.
pub(crate) fn check(value: f64, test: impl FnOnce(f64) -> bool) -> Option<bool> {
    (!value.is_nan()).then(|| test(value))
}

/// The whole report.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// `full` or `quick`.
    pub(crate) quick: bool,
    /// When it was measured.
    pub(crate) date: String,
    /// Machine facts.
    pub(crate) facts: Vec<(String, String)>,
    /// The command line that produced it.
    pub(crate) command: String,
    /// Notes on the whole run.
    pub(crate) notes: Vec<String>,
    /// The figures.
    pub(crate) figures: Vec<Figure>,
    /// Profile notes kept by hand (`bench/PROFILE.md`).
    pub(crate) profile: String,
}

impl Report {
    /// Renders the report as Markdown.
    pub(crate) fn render(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Generated by `{}` on {} ({} run). Do not edit by hand: rerun it \
             (`bash bench/run.sh`); the profile notes come from `bench/PROFILE.md`.\n",
            self.command,
            self.date,
            if self.quick {
                "quick: small sizes, not a measurement"
            } else {
                "full"
            }
        );
        let _ = writeln!(md, "## Machine\n");
        let _ = writeln!(md, "| fact | value |\n|---|---|");
        for (name, value) in &self.facts {
            let _ = writeln!(md, "| {name} | {} |", escape(value));
        }
        md.push('\n');
        if !self.notes.is_empty() {
            let _ = writeln!(md, "## How\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Summary\n");
        let _ = writeln!(
            md,
            "| figure | target | measured | met |\n|---|---|---|---|"
        );
        for figure in &self.figures {
            for target in &figure.targets {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    short_title(&figure.title),
                    target.target,
                    target.measured,
                    met(target.met)
                );
            }
            if figure.targets.is_empty() && !figure.missing.is_empty() {
                let _ = writeln!(
                    md,
                    "| {} | – | {} | – |",
                    short_title(&figure.title),
                    figure.missing.join("; ")
                );
            }
        }
        md.push('\n');
        for figure in &self.figures {
            render_figure(&mut md, figure);
        }
        if !self.profile.trim().is_empty() {
            let _ = writeln!(md, "## Profile\n");
            md.push_str(self.profile.trim());
            md.push('\n');
        }
        md
    }
}

fn short_title(title: &str) -> &str {
    title.split(':').next().unwrap_or(title)
}

fn met(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

fn render_figure(md: &mut String, figure: &Figure) {
    let _ = writeln!(md, "## {}\n", figure.title);
    for line in &figure.setup {
        let _ = writeln!(md, "- {line}");
    }
    if !figure.setup.is_empty() {
        md.push('\n');
    }
    for missing in &figure.missing {
        let _ = writeln!(md, "**{missing}**\n");
    }
    if !figure.rows.is_empty() {
        let _ = writeln!(
            md,
            "| measurement | median | min – max | runs | ratio to baseline |\n|---|---|---|---|---|"
        );
        for (index, row) in figure.rows.iter().enumerate() {
            let ratio = match row.baseline {
                Some(baseline) => format!(
                    "{} of {}",
                    times(figure.ratio(index)),
                    short_label(&figure.rows[baseline].label)
                ),
                None => "(baseline)".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} – {} | {} | {} |",
                escape(&row.label),
                row.unit.format(row.samples.median()),
                row.unit.bare(row.samples.min()),
                row.unit.format(row.samples.max()),
                row.samples.len(),
                ratio
            );
        }
        md.push('\n');
    }
    if !figure.targets.is_empty() {
        let _ = writeln!(md, "| target | measured | met |\n|---|---|---|");
        for target in &figure.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                target.target,
                target.measured,
                met(target.met)
            );
        }
        md.push('\n');
    }
}

/// The part of a row label before ` (`: `ssh` of `ssh (key auth)`.
fn short_label(label: &str) -> &str {
    label.split(" (").next().unwrap_or(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_ratios_and_targets() {
        let mut figure = Figure::new("1. Cold command: a test");
        let samples = |values: &[f64]| {
            let mut samples = Samples::new();
            for value in values {
                samples.push(*value);
            }
            samples
        };
        let base = figure.row(
            "ssh (baseline)",
            Unit::Millis,
            samples(&[100.0, 120.0]),
            None,
        );
        let ours = figure.row("ours", Unit::Millis, samples(&[2.0, 3.0, 4.0]), Some(base));
        assert_eq!(figure.ratio(ours), 3.0 / 110.0);
        figure.target(
            "≤ 5 ms",
            figure.shown(ours),
            check(figure.median(ours), |v| v <= 5.0),
        );
        let report = Report {
            quick: true,
            date: "today".into(),
            facts: vec![("CPUs".into(), "2".into())],
            command: "bench".into(),
            notes: vec![],
            figures: vec![figure],
            profile: String::new(),
        };
        let md = report.render();
        assert!(
            md.contains("| ours | 3.00 ms | 2.00 – 4.00 ms | 3 | 0.027× of ssh |"),
            "{md}"
        );
        assert!(md.contains("| ≤ 5 ms | 3.00 ms | yes |"), "{md}");
    }
}
