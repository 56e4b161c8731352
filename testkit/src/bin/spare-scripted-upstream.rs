//! `spare-scripted-upstream`: runs the scripted OpenAI-compatible test double as a process,
//! for benchmarks and the local testnet. Prints its base URL on stdout, then serves until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use spare_testkit::{DEFAULT_MODEL, FailureMode, Script, ScriptedUpstream};

/// A scripted OpenAI-compatible model server for tests and benchmarks. Not a model.
#[derive(Debug, Parser)]
#[command(name = "spare-scripted-upstream", version)]
struct Args {
    /// Address to listen on; port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Model id to serve; repeat for several.
    #[arg(long = "model", default_value = DEFAULT_MODEL)]
    models: Vec<String>,

    /// Number of content chunks per response; chunk i carries the text "tok{i} ".
    #[arg(long, default_value_t = 16)]
    chunks: usize,

    /// Time to first token in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,

    /// Gap between consecutive chunks in milliseconds.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,

    /// Respond to every chat completion with this HTTP status (for failover checks).
    #[arg(long)]
    fail_status: Option<u16>,

    /// Log filter for stderr, in tracing-subscriber `EnvFilter` syntax.
    #[arg(long, default_value = "warn")]
    log: String,
}

impl Args {
    fn script(&self) -> Script {
        let mode = match self.fail_status {
            Some(status) => FailureMode::HttpStatus(status),
            None => FailureMode::Normal,
        };
        Script {
            models: self.models.clone(),
            chunks: self.chunks,
            time_to_first_token: Duration::from_millis(self.ttft_ms),
            gap: Duration::from_millis(self.gap_ms),
            mode,
            // The process may serve for hours, so it keeps no per-request record.
            record_requests: false,
            ..Script::default()
        }
    }
}

async fn wait_for_stop_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();

    let upstream = match ScriptedUpstream::start_on(args.listen, args.script()).await {
        Ok(upstream) => upstream,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The URL line is how a parent process learns the port; without it the process is useless.
    let mut stdout = std::io::stdout();
    if let Err(error) = writeln!(stdout, "{}", upstream.base_url()).and_then(|()| stdout.flush()) {
        eprintln!("error: failed to print the base URL to stdout: {error}");
        return ExitCode::FAILURE;
    }
    tracing::info!(base_url = %upstream.base_url(), models = ?args.models, "Scripted upstream listening");

    if let Err(error) = wait_for_stop_signal().await {
        eprintln!("error: failed to wait for a stop signal: {error}");
    }
    match upstream.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
