//! `spare-bench`: measures, in one run against one scripted upstream, what each hop adds to
//! a streamed chat completion: direct to the upstream, through `spare gateway` → `spare node`
//! over loopback, and through the LiteLLM proxy.
//!
//! For each path and concurrency level it reports time to first token (and what it adds
//! over the direct path), chunks per second, CPU time per request and peak RSS of each
//! server process. `scripts/bench` builds everything and installs LiteLLM first. This is a
//! benchmark, not a test: its numbers depend on the machine and are never asserted.

mod load;
mod paths;
mod process;
mod report;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::load::LoadPlan;
use crate::paths::{LiteLlmSetup, PathUnderTest, SpareSetup};
use crate::process::ManagedChild;
use crate::report::{PeakRecord, RunRecord};
use crate::stats::RunSummary;

/// Benchmark the direct, spare and LiteLLM paths against a scripted upstream (loopback only).
#[derive(Debug, Parser)]
#[command(name = "spare-bench", version)]
struct Args {
    /// Paths to measure, comma separated: direct, spare, litellm. Added TTFT needs direct.
    #[arg(long, value_delimiter = ',', default_value = "direct,spare,litellm")]
    paths: Vec<String>,

    /// The `spare` binary [default: $CARGO_TARGET_DIR/release/spare, else target/release/spare].
    #[arg(long)]
    spare_bin: Option<PathBuf>,

    /// The `spare-scripted-upstream` binary [default: next to this binary].
    #[arg(long)]
    upstream_bin: Option<PathBuf>,

    /// Python virtual environment with `litellm[proxy]` installed.
    #[arg(long, default_value = ".tools/litellm-venv")]
    litellm_venv: PathBuf,

    /// Model id the upstream serves and the clients request.
    #[arg(long, default_value = "bench-model")]
    model: String,

    /// Content chunks the upstream streams per response.
    #[arg(long, default_value_t = 16)]
    chunks: usize,

    /// Upstream time to first token, in milliseconds.
    #[arg(long, default_value_t = 10)]
    ttft_ms: u64,

    /// Upstream gap between chunks, in milliseconds.
    #[arg(long, default_value_t = 2)]
    gap_ms: u64,

    /// Concurrency level and request count per round as CONCURRENCY:REQUESTS; repeatable.
    #[arg(long = "level", value_parser = parse_level, default_values = ["1:200", "64:640"])]
    levels: Vec<(usize, usize)>,

    /// Rounds per level. Each round runs every path once, in a rotated order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Unmeasured requests per path at concurrency 1 before measuring; each level also
    /// starts with one unmeasured request per client.
    #[arg(long, default_value_t = 20)]
    warmup: usize,

    /// No new request starts after this many seconds of one run.
    #[arg(long, default_value_t = 120)]
    run_time_limit_secs: u64,

    /// A request that has not finished after this many seconds counts as failed.
    #[arg(long, default_value_t = 30)]
    request_timeout_secs: u64,

    /// Seconds to wait for each server process to become ready.
    #[arg(long, default_value_t = 120)]
    startup_timeout_secs: u64,

    /// Keep the temporary directory with the server logs and configs, and print its path.
    #[arg(long)]
    keep_logs: bool,

    /// Markdown file whose section between the spare-bench marker comments is replaced
    /// with the results.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn parse_level(text: &str) -> Result<(usize, usize), String> {
    let (concurrency, requests) = text.split_once(':').ok_or_else(|| {
        format!("invalid level `{text}`: expected CONCURRENCY:REQUESTS, such as 64:640")
    })?;
    let concurrency: usize = concurrency
        .parse()
        .map_err(|error| format!("invalid concurrency in `{text}`: {error}"))?;
    let requests: usize = requests
        .parse()
        .map_err(|error| format!("invalid request count in `{text}`: {error}"))?;
    if concurrency == 0 || requests == 0 {
        return Err(format!(
            "invalid level `{text}`: concurrency and requests must be at least 1"
        ));
    }
    Ok((concurrency, requests))
}

fn default_upstream_binary() -> anyhow::Result<PathBuf> {
    let current = std::env::current_exe().context("failed to locate the spare-bench binary")?;
    let directory = current
        .parent()
        .context("the spare-bench binary has no parent directory")?;
    Ok(directory.join("spare-scripted-upstream"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::select! {
        result = run(args) => result,
        signal = tokio::signal::ctrl_c() => {
            signal.context("failed to wait for Ctrl-C")?;
            // Returning drops every child handle, which kills their process groups.
            bail!("interrupted; stopped all child processes")
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    for path in &args.paths {
        if !["direct", "spare", "litellm"].contains(&path.as_str()) {
            bail!("invalid path `{path}`: expected direct, spare or litellm");
        }
    }
    let work_dir = tempfile::tempdir().context("failed to create a temporary directory")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()
        .context("failed to build the HTTP client")?;

    let upstream_bin = match &args.upstream_bin {
        Some(path) => path.clone(),
        None => default_upstream_binary()?,
    };
    let (upstream, upstream_url) = paths::start_upstream(
        &upstream_bin,
        &args.model,
        args.chunks,
        args.ttft_ms,
        args.gap_ms,
        work_dir.path(),
    )
    .await?;
    eprintln!("upstream: {upstream_url}");

    let (under_test, not_measured) =
        start_paths(&args, &client, &upstream_url, work_dir.path()).await;
    if under_test.is_empty() {
        bail!("no path could be started: {not_measured:?}");
    }
    let body = load::request_body(&args.model);
    warm_up(&args, &client, &under_test, &body, 1, args.warmup).await;

    let measured = measure(&args, &client, &under_test, &upstream, &body).await?;
    let section = render_section(&args, &measured, &not_measured);
    println!("{section}");
    if let Some(path) = &args.write {
        write_section(path, &section)?;
        eprintln!("wrote the results into {}", path.display());
    }

    for path in under_test {
        for process in path.processes {
            process.stop().await;
        }
    }
    upstream.stop().await;
    if args.keep_logs {
        eprintln!("logs kept in {}", work_dir.keep().display());
    }
    Ok(())
}

/// Starts every requested path, returning those that started and why the others did not.
async fn start_paths(
    args: &Args,
    client: &reqwest::Client,
    upstream_url: &str,
    work_dir: &std::path::Path,
) -> (Vec<PathUnderTest>, Vec<(String, String)>) {
    let startup_timeout = Duration::from_secs(args.startup_timeout_secs);
    let spare_bin = args
        .spare_bin
        .clone()
        .unwrap_or_else(paths::default_spare_binary);
    let max_concurrency = args
        .levels
        .iter()
        .map(|&(concurrency, _)| concurrency)
        .max()
        .unwrap_or(1);
    let mut started = Vec::new();
    let mut not_measured = Vec::new();

    for name in &args.paths {
        let path_dir = work_dir.join(name);
        if let Err(error) = std::fs::create_dir_all(&path_dir) {
            not_measured.push((
                name.clone(),
                format!("failed to create {}: {error}", path_dir.display()),
            ));
            continue;
        }
        let result = match name.as_str() {
            "direct" => Ok(paths::direct(upstream_url)),
            "spare" => {
                let setup = SpareSetup {
                    binary: &spare_bin,
                    upstream_base_url: upstream_url,
                    model: &args.model,
                    work_dir: &path_dir,
                    startup_timeout,
                    node_max_concurrent: max_concurrency * 2,
                };
                paths::start_spare(client, setup).await
            }
            _ => {
                let setup = LiteLlmSetup {
                    venv: &args.litellm_venv,
                    upstream_base_url: upstream_url,
                    model: &args.model,
                    work_dir: &path_dir,
                    startup_timeout,
                };
                paths::start_litellm(client, setup).await
            }
        };
        match result {
            Ok(path) => {
                eprintln!("{name}: ready at {}", path.target.chat_url);
                started.push(path);
            }
            Err(error) => {
                eprintln!("{name}: not measured: {error:#}");
                not_measured.push((name.clone(), format!("{error:#}")));
            }
        }
    }
    (started, not_measured)
}

fn load_plan(args: &Args, concurrency: usize, requests: usize) -> LoadPlan {
    LoadPlan {
        requests,
        concurrency,
        time_limit: Duration::from_secs(args.run_time_limit_secs),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        expected_chunks: args.chunks,
    }
}

/// Sends `requests` unmeasured requests at `concurrency` on every path, so connections and
/// pools exist before timing starts.
async fn warm_up(
    args: &Args,
    client: &reqwest::Client,
    under_test: &[PathUnderTest],
    body: &bytes::Bytes,
    concurrency: usize,
    requests: usize,
) {
    for path in under_test {
        let plan = load_plan(args, concurrency, requests);
        let result = load::run_load(client, &path.target, body, plan).await;
        let summary = RunSummary::from_samples(&result.samples, result.wall);
        if let Some(error) = summary.first_error {
            eprintln!(
                "{}: {} of {} warm-up requests at concurrency {concurrency} failed, first: {error}",
                path.target.name, summary.errors, summary.requests
            );
        }
    }
}

/// Server processes measured for a path: its own, then the shared upstream.
fn measured_processes<'a>(
    path: &'a PathUnderTest,
    upstream: &'a ManagedChild,
) -> Vec<&'a ManagedChild> {
    path.processes
        .iter()
        .chain(std::iter::once(upstream))
        .collect()
}

fn read_all(
    processes: &[&ManagedChild],
    ticks_per_second: u64,
) -> anyhow::Result<Vec<process::ProcessUsage>> {
    processes
        .iter()
        .map(|child| {
            process::read_usage(child.pid, ticks_per_second).with_context(|| {
                format!(
                    "failed to read the usage of {} (pid {})",
                    child.label, child.pid
                )
            })
        })
        .collect()
}

/// Everything measured, and the paths that stopped during the run with the reason.
struct Measurements {
    runs: Vec<RunRecord>,
    peaks: Vec<PeakRecord>,
    stopped: Vec<(String, String)>,
}

/// Runs every level; within a level, each round runs every path once in a rotated order.
///
/// A path whose server process exits stops being measured, and the run goes on with the
/// other paths; an exited upstream ends the whole run.
async fn measure(
    args: &Args,
    client: &reqwest::Client,
    under_test: &[PathUnderTest],
    upstream: &ManagedChild,
    body: &bytes::Bytes,
) -> anyhow::Result<Measurements> {
    let ticks_per_second = process::clock_ticks_per_second();
    let mut measured = Measurements {
        runs: Vec::new(),
        peaks: Vec::new(),
        stopped: Vec::new(),
    };
    let is_stopped = |stopped: &[(String, String)], path: &PathUnderTest| {
        stopped.iter().any(|(name, _)| *name == path.target.name)
    };

    for &(concurrency, requests) in &args.levels {
        // One request per client at this level, sent now rather than before the first level,
        // so the peak RSS of a lower level does not include a higher level's warm-up.
        warm_up(args, client, under_test, body, concurrency, concurrency).await;
        for round in 0..args.rounds {
            for offset in 0..under_test.len() {
                let path = &under_test[(round + offset) % under_test.len()];
                if is_stopped(&measured.stopped, path) {
                    continue;
                }
                let processes = measured_processes(path, upstream);
                let plan = load_plan(args, concurrency, requests);
                match measure_run(client, path, &processes, body, plan, ticks_per_second).await {
                    Ok(cpu_and_summary) => {
                        let (cpu_ms_per_request, summary) = cpu_and_summary;
                        print_progress(concurrency, round, &path.target.name, &summary);
                        measured.runs.push(RunRecord {
                            path: path.target.name.clone(),
                            concurrency,
                            round,
                            summary,
                            cpu_ms_per_request,
                        });
                    }
                    Err(error) => {
                        process::read_usage(upstream.pid, ticks_per_second)
                            .context("the scripted upstream stopped, so no path can be measured")?;
                        eprintln!("{}: stopped measuring: {error:#}", path.target.name);
                        measured
                            .stopped
                            .push((path.target.name.clone(), format!("{error:#}")));
                    }
                }
            }
        }

        // VmHWM is a peak since process start, so this covers this level and the ones before.
        for path in under_test {
            if is_stopped(&measured.stopped, path) {
                continue;
            }
            let processes = measured_processes(path, upstream);
            let Ok(usages) = read_all(&processes, ticks_per_second) else {
                continue;
            };
            for (child, usage) in processes.iter().zip(usages) {
                measured.peaks.push(PeakRecord {
                    path: path.target.name.clone(),
                    concurrency,
                    process: child.label.clone(),
                    peak_rss_kib: usage.peak_rss_kib,
                });
            }
        }
    }
    Ok(measured)
}

/// Runs one load and returns the CPU milliseconds per request of each process and the
/// summary. Fails when a process of the path has exited before or during the run.
async fn measure_run(
    client: &reqwest::Client,
    path: &PathUnderTest,
    processes: &[&ManagedChild],
    body: &bytes::Bytes,
    plan: LoadPlan,
    ticks_per_second: u64,
) -> anyhow::Result<(Vec<(String, f64)>, RunSummary)> {
    let before = read_all(processes, ticks_per_second)?;
    let result = load::run_load(client, &path.target, body, plan).await;
    let after = read_all(processes, ticks_per_second)?;

    let summary = RunSummary::from_samples(&result.samples, result.wall);
    let request_count = summary.requests.max(1) as f64;
    let cpu_ms_per_request = processes
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(child, (start, end))| {
            let cpu = end.cpu.saturating_sub(start.cpu);
            (
                child.label.clone(),
                cpu.as_secs_f64() * 1000.0 / request_count,
            )
        })
        .collect();
    Ok((cpu_ms_per_request, summary))
}

fn print_progress(concurrency: usize, round: usize, path: &str, summary: &RunSummary) {
    let p50 = summary
        .ttft_p50_ms
        .map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.2}"));
    eprintln!(
        "c={concurrency} round {round} {path:<8} p50 {p50:>8} ms  failed {}/{}  {:.0} chunks/s",
        summary.errors, summary.requests, summary.chunks_per_second,
    );
}

fn render_section(
    args: &Args,
    measured: &Measurements,
    not_measured: &[(String, String)],
) -> String {
    let mut section = String::new();
    section.push_str(&machine::describe(args));
    section.push('\n');
    section.push_str(&report::render_tables(&measured.runs, &measured.peaks));
    for (path, reason) in not_measured {
        let first_line = reason.lines().next().unwrap_or_default();
        section.push_str(&format!("\nNot measured: {path}: {first_line}\n"));
    }
    for (path, reason) in &measured.stopped {
        let first_line = reason.lines().next().unwrap_or_default();
        section.push_str(&format!(
            "\nStopped measuring {path} after a server process exited: {first_line}\n"
        ));
    }
    section
}

fn write_section(path: &std::path::Path, section: &str) -> anyhow::Result<()> {
    let document = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let Some(updated) = report::replace_section(&document, section) else {
        bail!(
            "{} has no `{}` … `{}` markers; add them where the results belong",
            path.display(),
            report::BEGIN_MARKER,
            report::END_MARKER
        );
    };
    std::fs::write(path, updated).with_context(|| format!("failed to write {}", path.display()))
}

mod machine {
    //! The machine and software description printed above the results.

    use std::process::Command;

    use super::Args;

    fn first_line_of(command: &mut Command) -> Option<String> {
        let output = command.output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .map(str::to_owned)
    }

    fn cpu_model() -> String {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(
                || "unknown CPU".to_owned(),
                |(_, model)| model.trim().to_owned(),
            )
    }

    fn memory_total() -> String {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
            )
    }

    /// Describes the machine, the software versions and the run parameters.
    pub(super) fn describe(args: &Args) -> String {
        let logical_cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let litellm_version =
            first_line_of(Command::new(args.litellm_venv.join("bin/python")).args([
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ]))
            .unwrap_or_else(|| "not installed".to_owned());
        let spare_bin = args
            .spare_bin
            .clone()
            .unwrap_or_else(super::paths::default_spare_binary);
        let spare_version = first_line_of(Command::new(&spare_bin).arg("--version"))
            .unwrap_or_else(|| "not available".to_owned());
        let commit = first_line_of(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
            .unwrap_or_else(|| "unknown".to_owned());
        let levels: Vec<String> = args
            .levels
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect();
        let command: Vec<String> = std::env::args().skip(1).collect();

        format!(
            "Machine: {cpu}, {logical_cpus} logical CPUs, {memory} RAM, Linux {kernel}.\n\
             Software: `spare --version`: {spare_version} (commit {commit}); LiteLLM {litellm_version}.\n\
             Upstream: {chunks} chunks per response, time to first token {ttft} ms, gap {gap} ms.\n\
             Levels (concurrency:requests per round): {levels}; rounds: {rounds}; warm-up: {warmup}.\n\
             Arguments: `{command}`\n",
            cpu = cpu_model(),
            memory = memory_total(),
            kernel = kernel.trim(),
            chunks = args.chunks,
            ttft = args.ttft_ms,
            gap = args.gap_ms,
            levels = levels.join(", "),
            rounds = args.rounds,
            warmup = args.warmup,
            command = command.join(" "),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn level_parses_concurrency_and_requests() {
        assert_eq!(parse_level("64:640"), Ok((64, 640)));
        assert!(parse_level("64").is_err());
        assert!(parse_level("0:10").is_err());
        assert!(parse_level("a:10").is_err());
    }

    #[test]
    fn default_arguments_parse() {
        let args = Args::try_parse_from(["spare-bench"]).unwrap();
        assert_eq!(args.levels, vec![(1, 200), (64, 640)]);
        assert_eq!(args.paths, vec!["direct", "spare", "litellm"]);
    }
}
