//! Aggregation over rounds and the markdown results section.

use std::fmt::Write as _;

use crate::stats::{RunSummary, median};

/// Marker lines that enclose the generated section in a markdown file.
pub(crate) const BEGIN_MARKER: &str = "<!-- spare-bench results begin -->";
/// See [`BEGIN_MARKER`].
pub(crate) const END_MARKER: &str = "<!-- spare-bench results end -->";

/// One measured run of one path at one concurrency in one round.
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    pub(crate) path: String,
    pub(crate) concurrency: usize,
    pub(crate) round: usize,
    pub(crate) summary: RunSummary,
    /// CPU milliseconds per request of each server process, by process label.
    pub(crate) cpu_ms_per_request: Vec<(String, f64)>,
}

/// Peak RSS of one process after every run at one concurrency level.
#[derive(Debug, Clone)]
pub(crate) struct PeakRecord {
    pub(crate) path: String,
    pub(crate) concurrency: usize,
    pub(crate) process: String,
    pub(crate) peak_rss_kib: u64,
}

/// Medians over rounds for one path at one concurrency.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PathRow {
    pub(crate) path: String,
    pub(crate) concurrency: usize,
    pub(crate) rounds: usize,
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    pub(crate) ttft_p50_ms: Option<f64>,
    pub(crate) ttft_p99_ms: Option<f64>,
    pub(crate) added_p50_ms: Option<f64>,
    pub(crate) added_p99_ms: Option<f64>,
    pub(crate) chunks_per_second: Option<f64>,
    pub(crate) first_error: Option<String>,
}

fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    median(&values)
}

/// Computes one row per (path, concurrency), in first-seen order.
///
/// Added time to first token is computed per round against the direct run of the same
/// round and concurrency: path p50 − direct p50, and path p99 − direct p99. The row shows
/// the median of these differences over rounds. Slow drift thus affects both sides of each
/// difference alike.
pub(crate) fn aggregate(runs: &[RunRecord]) -> Vec<PathRow> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for run in runs {
        let key = (run.path.clone(), run.concurrency);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    let direct_run = |concurrency: usize, round: usize| {
        runs.iter().find(|run| {
            run.path == "direct" && run.concurrency == concurrency && run.round == round
        })
    };
    let difference = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);

    keys.into_iter()
        .map(|(path, concurrency)| {
            let own: Vec<&RunRecord> = runs
                .iter()
                .filter(|run| run.path == path && run.concurrency == concurrency)
                .collect();
            let added = |pick: fn(&RunSummary) -> Option<f64>| {
                median_of(own.iter().map(|run| {
                    let direct = direct_run(concurrency, run.round)?;
                    difference(pick(&run.summary), pick(&direct.summary))
                }))
            };
            PathRow {
                rounds: own.len(),
                requests: own.iter().map(|run| run.summary.requests).sum(),
                errors: own.iter().map(|run| run.summary.errors).sum(),
                ttft_p50_ms: median_of(own.iter().map(|run| run.summary.ttft_p50_ms)),
                ttft_p99_ms: median_of(own.iter().map(|run| run.summary.ttft_p99_ms)),
                added_p50_ms: added(|summary| summary.ttft_p50_ms),
                added_p99_ms: added(|summary| summary.ttft_p99_ms),
                chunks_per_second: median_of(
                    own.iter().map(|run| Some(run.summary.chunks_per_second)),
                ),
                first_error: own.iter().find_map(|run| run.summary.first_error.clone()),
                path,
                concurrency,
            }
        })
        .collect()
}

/// Median CPU milliseconds per request of each process of `path` at `concurrency`.
fn cpu_medians(runs: &[RunRecord], path: &str, concurrency: usize) -> Vec<(String, Option<f64>)> {
    let own: Vec<&RunRecord> = runs
        .iter()
        .filter(|run| run.path == path && run.concurrency == concurrency)
        .collect();
    let Some(first) = own.first() else {
        return Vec::new();
    };
    first
        .cpu_ms_per_request
        .iter()
        .map(|(process, _)| {
            let values = own.iter().map(|run| {
                run.cpu_ms_per_request
                    .iter()
                    .find(|(label, _)| label == process)
                    .map(|(_, value)| *value)
            });
            (process.clone(), median_of(values))
        })
        .collect()
}

fn format_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.2}"))
}

fn format_signed_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:+.2}"))
}

/// Renders the latency table and the per-process cost table as markdown.
pub(crate) fn render_tables(runs: &[RunRecord], peaks: &[PeakRecord]) -> String {
    let rows = aggregate(runs);
    let mut out = String::new();

    out.push_str(
        "| path | concurrency | requests (failed) | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | added TTFT p99 ms | chunks/s |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
            row.path,
            row.concurrency,
            row.requests,
            row.errors,
            format_ms(row.ttft_p50_ms),
            format_ms(row.ttft_p99_ms),
            format_signed_ms(row.added_p50_ms),
            format_signed_ms(row.added_p99_ms),
            row.chunks_per_second
                .map_or_else(|| "n/a".to_owned(), |rate| format!("{rate:.0}")),
        );
    }

    out.push_str("\n| path | concurrency | process | CPU ms per request | peak RSS MiB |\n");
    out.push_str("|---|---:|---|---:|---:|\n");
    for row in &rows {
        for (process, cpu) in cpu_medians(runs, &row.path, row.concurrency) {
            let peak = peaks
                .iter()
                .find(|peak| {
                    peak.path == row.path
                        && peak.concurrency == row.concurrency
                        && peak.process == process
                })
                .map_or_else(
                    || "n/a".to_owned(),
                    |peak| format!("{:.1}", peak.peak_rss_kib as f64 / 1024.0),
                );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.path,
                row.concurrency,
                process,
                format_ms(cpu),
                peak
            );
        }
    }

    let failures: Vec<&PathRow> = rows
        .iter()
        .filter(|row| row.first_error.is_some())
        .collect();
    if !failures.is_empty() {
        out.push_str("\nFirst error per path with failed requests:\n\n");
        for row in failures {
            let _ = writeln!(
                out,
                "- {} at concurrency {}: {}",
                row.path,
                row.concurrency,
                row.first_error.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

/// Replaces the text between [`BEGIN_MARKER`] and [`END_MARKER`] in `document` with `section`.
pub(crate) fn replace_section(document: &str, section: &str) -> Option<String> {
    let begin = document.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = begin + document[begin..].find(END_MARKER)?;
    Some(format!(
        "{}\n{}\n{}",
        &document[..begin],
        section.trim_end(),
        &document[end..]
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn run(path: &str, round: usize, p50: f64, p99: f64, cpu: f64) -> RunRecord {
        RunRecord {
            path: path.to_owned(),
            concurrency: 1,
            round,
            summary: RunSummary {
                requests: 10,
                errors: 0,
                ttft_p50_ms: Some(p50),
                ttft_p99_ms: Some(p99),
                chunks_per_second: 100.0 + round as f64,
                first_error: None,
            },
            cpu_ms_per_request: vec![("gateway".to_owned(), cpu)],
        }
    }

    #[test]
    fn added_ttft_is_median_of_per_round_differences() {
        let runs = vec![
            run("direct", 0, 10.0, 12.0, 0.0),
            run("spare", 0, 13.0, 20.0, 1.0),
            run("direct", 1, 20.0, 22.0, 0.0),
            run("spare", 1, 21.0, 30.0, 3.0),
            run("direct", 2, 10.0, 11.0, 0.0),
            run("spare", 2, 12.0, 11.0, 2.0),
        ];
        let rows = aggregate(&runs);
        let spare = rows.iter().find(|row| row.path == "spare").unwrap();

        // per-round p50 differences 3, 1, 2; p99 differences 8, 8, 0
        assert_eq!(spare.added_p50_ms, Some(2.0));
        assert_eq!(spare.added_p99_ms, Some(8.0));
        // medians of the per-round values
        assert_eq!(spare.ttft_p50_ms, Some(13.0));
        assert_eq!(spare.chunks_per_second, Some(101.0));
        assert_eq!(spare.requests, 30);
        assert_eq!(
            cpu_medians(&runs, "spare", 1),
            vec![("gateway".to_owned(), Some(2.0))]
        );

        let direct = rows.iter().find(|row| row.path == "direct").unwrap();
        assert_eq!(direct.added_p50_ms, Some(0.0));
    }

    #[test]
    fn added_ttft_absent_without_direct_runs() {
        let rows = aggregate(&[run("litellm", 0, 10.0, 12.0, 1.0)]);
        assert_eq!(rows[0].added_p50_ms, None);
        assert!(render_tables(&[run("litellm", 0, 10.0, 12.0, 1.0)], &[]).contains("| n/a |"));
    }

    #[test]
    fn section_between_markers_is_replaced() {
        let document = format!("intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n");
        let updated = replace_section(&document, "new table\n").unwrap();
        assert_eq!(
            updated,
            format!("intro\n{BEGIN_MARKER}\nnew table\n{END_MARKER}\noutro\n")
        );
        assert_eq!(replace_section("no markers", "x"), None);
    }
}
