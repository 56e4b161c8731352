//! The measured paths and the processes behind them: the scripted upstream, a spare node
//! with a spare gateway, and the LiteLLM proxy.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use crate::load::Target;
use crate::process::{ManagedChild, log_tail};

/// API key the harness gives the spare gateway through `SPARE_API_KEY`.
const GATEWAY_API_KEY: &str = "spare-bench-local-key";

/// Interval between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A path under test and the server processes it adds in front of the upstream.
#[derive(Debug)]
pub(crate) struct PathUnderTest {
    pub(crate) target: Target,
    pub(crate) processes: Vec<ManagedChild>,
}

/// Returns a loopback port that was free a moment ago.
///
/// NOTE: another program could take the port before the child binds it; the child then
/// fails to start and the harness reports its log.
pub(crate) fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("failed to bind a probe port")?;
    Ok(listener
        .local_addr()
        .context("failed to read the probe port")?
        .port())
}

/// Starts `spare-scripted-upstream` and returns it with its base URL.
pub(crate) async fn start_upstream(
    binary: &Path,
    model: &str,
    chunks: usize,
    ttft_ms: u64,
    gap_ms: u64,
    log_dir: &Path,
) -> anyhow::Result<(ManagedChild, String)> {
    let mut command = Command::new(binary);
    command.args(["--listen", "127.0.0.1:0", "--model", model]);
    command.args([
        "--chunks",
        &chunks.to_string(),
        "--ttft-ms",
        &ttft_ms.to_string(),
        "--gap-ms",
        &gap_ms.to_string(),
    ]);
    let mut upstream = ManagedChild::spawn("upstream", command, log_dir, true)?;

    let stdout = upstream
        .take_stdout()
        .context("upstream stdout was not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let first_line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("timed out waiting for the upstream to print its URL")?
        .context("failed to read the upstream stdout")?;
    let Some(base_url) = first_line else {
        bail!(
            "the upstream exited without printing its URL; log tail:\n{}",
            log_tail(&upstream.log_path)
        );
    };
    Ok((upstream, base_url))
}

/// Builds the direct path, where the client sends requests to the upstream itself.
pub(crate) fn direct(upstream_base_url: &str) -> PathUnderTest {
    PathUnderTest {
        target: Target {
            name: "direct".to_owned(),
            chat_url: format!("{upstream_base_url}/chat/completions"),
            api_key: None,
        },
        processes: Vec::new(),
    }
}

/// Polls `url` until `ready` accepts its JSON body, the process exits, or `timeout` passes.
async fn wait_until_ready(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    process: &mut ManagedChild,
    timeout: Duration,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + timeout;
    let mut last_seen = String::from("no response yet");
    while Instant::now() < give_up {
        process.check_running()?;
        let mut request = client.get(url).timeout(Duration::from_secs(2));
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if ready(&body) {
                    return Ok(());
                }
                last_seen = body.to_string();
            }
            Ok(response) => last_seen = format!("HTTP {}", response.status()),
            Err(error) => last_seen = error.to_string(),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    bail!(
        "{} was not ready at {url} within {timeout:?} (last: {last_seen}); log tail:\n{}",
        process.label,
        log_tail(&process.log_path)
    )
}

fn lists_model(models: &Value, model: &str) -> bool {
    models
        .get("data")
        .and_then(Value::as_array)
        .is_some_and(|data| {
            data.iter()
                .any(|entry| entry.get("id").and_then(Value::as_str) == Some(model))
        })
}

/// Settings for starting LiteLLM.
#[derive(Debug)]
pub(crate) struct LiteLlmSetup<'a> {
    pub(crate) venv: &'a Path,
    pub(crate) upstream_base_url: &'a str,
    pub(crate) model: &'a str,
    pub(crate) work_dir: &'a Path,
    pub(crate) startup_timeout: Duration,
}

/// Starts the LiteLLM proxy in front of the upstream, bound to loopback with no master key.
pub(crate) async fn start_litellm(
    client: &reqwest::Client,
    setup: LiteLlmSetup<'_>,
) -> anyhow::Result<PathUnderTest> {
    // The child runs in its work directory, so a relative venv path must be resolved here.
    let venv = std::path::absolute(setup.venv)
        .with_context(|| format!("failed to resolve {}", setup.venv.display()))?;
    let executable = venv.join("bin/litellm");
    if !executable.exists() {
        bail!(
            "{} not found; run scripts/bench, which installs litellm[proxy] there",
            executable.display()
        );
    }
    let config_path = setup.work_dir.join("litellm.yaml");
    let config = format!(
        "model_list:\n  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n      api_base: {base}\n      api_key: unused-by-scripted-upstream\n",
        model = setup.model,
        base = setup.upstream_base_url,
    );
    std::fs::write(&config_path, config)
        .with_context(|| format!("failed to write {}", config_path.display()))?;

    let port = free_loopback_port()?;
    let mut command = Command::new(&executable);
    command
        .arg("--config")
        .arg(&config_path)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .current_dir(setup.work_dir)
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env(
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY",
            "true",
        )
        .env("NO_PROXY", "127.0.0.1,localhost");
    let mut process = ManagedChild::spawn("litellm", command, setup.work_dir, false)?;

    let base = format!("http://127.0.0.1:{port}");
    let models_url = format!("{base}/v1/models");
    wait_until_ready(
        client,
        &models_url,
        None,
        &mut process,
        setup.startup_timeout,
        |models| lists_model(models, setup.model),
    )
    .await?;
    Ok(PathUnderTest {
        target: Target {
            name: "litellm".to_owned(),
            chat_url: format!("{base}/v1/chat/completions"),
            api_key: None,
        },
        processes: vec![process],
    })
}

/// Settings for starting a spare node and gateway.
#[derive(Debug)]
pub(crate) struct SpareSetup<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) upstream_base_url: &'a str,
    pub(crate) model: &'a str,
    pub(crate) work_dir: &'a Path,
    pub(crate) startup_timeout: Duration,
    /// Value of `spare node --max-concurrent`, set above the highest concurrency level so the
    /// benchmark measures the hop and not the node's admission limit.
    pub(crate) node_max_concurrent: usize,
}

fn spare_command(setup: &SpareSetup<'_>, data_dir: &Path) -> Command {
    let mut command = Command::new(setup.binary);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .env("NO_COLOR", "1")
        .env("SPARE_LOG", "info")
        .env_remove("SPARE_CONFIG");
    command
}

/// Starts `spare node` in front of the upstream and `spare gateway` bootstrapped from it,
/// both on loopback with mDNS off.
pub(crate) async fn start_spare(
    client: &reqwest::Client,
    setup: SpareSetup<'_>,
) -> anyhow::Result<PathUnderTest> {
    if !setup.binary.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p spare` or pass --spare-bin",
            setup.binary.display()
        );
    }
    let node_dir = setup.work_dir.join("node");
    let gateway_dir = setup.work_dir.join("gateway");
    for dir in [&node_dir, &gateway_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }

    let mut node_command = spare_command(&setup, &node_dir);
    node_command.args([
        "node",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--upstream",
        setup.upstream_base_url,
    ]);
    node_command.args(["--max-concurrent", &setup.node_max_concurrent.to_string()]);
    let mut node = ManagedChild::spawn("node", node_command, setup.work_dir, false)?;
    let node_addr = wait_for_listen_addr(&mut node, setup.startup_timeout).await?;

    let port = free_loopback_port()?;
    let mut gateway_command = spare_command(&setup, &gateway_dir);
    gateway_command
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--bootstrap",
            &node_addr,
        ])
        .env("SPARE_API_KEY", GATEWAY_API_KEY);
    let mut gateway = ManagedChild::spawn("gateway", gateway_command, setup.work_dir, false)?;

    let base = format!("http://127.0.0.1:{port}");
    let models_url = format!("{base}/v1/models");
    wait_until_ready(
        client,
        &models_url,
        Some(GATEWAY_API_KEY),
        &mut gateway,
        setup.startup_timeout,
        |models| lists_model(models, setup.model),
    )
    .await?;
    Ok(PathUnderTest {
        target: Target {
            name: "spare".to_owned(),
            chat_url: format!("{base}/v1/chat/completions"),
            api_key: Some(GATEWAY_API_KEY.to_owned()),
        },
        processes: vec![gateway, node],
    })
}

/// Waits for the node to log `Listening on <multiaddr>/p2p/<peer id>` and returns the first
/// loopback address it logs.
async fn wait_for_listen_addr(
    node: &mut ManagedChild,
    timeout: Duration,
) -> anyhow::Result<String> {
    let give_up = Instant::now() + timeout;
    while Instant::now() < give_up {
        node.check_running()?;
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        if let Some(addr) = find_listen_addr(&log) {
            return Ok(addr);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    bail!(
        "the node logged no `Listening on /ip4/127.0.0.1/...` line within {timeout:?}; log tail:\n{}",
        log_tail(&node.log_path)
    )
}

fn find_listen_addr(log: &str) -> Option<String> {
    log.match_indices("Listening on ")
        .find_map(|(start, marker)| {
            let rest = &log[start + marker.len()..];
            let addr: String = rest
                .chars()
                .take_while(|character| {
                    !character.is_whitespace() && *character != '\u{1b}' && *character != '"'
                })
                .collect();
            (addr.starts_with("/ip4/127.0.0.1/") && addr.contains("/p2p/")).then_some(addr)
        })
}

/// Returns the default `spare` binary: `$CARGO_TARGET_DIR/release/spare`, else
/// `target/release/spare`.
pub(crate) fn default_spare_binary() -> PathBuf {
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target_dir.join("release").join("spare")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_found_in_log_line() {
        let log = "2026-12-04T20:00:00Z  INFO spare_node: Listening on /ip4/127.0.0.1/tcp/40123/p2p/12D3KooWabc\n";
        assert_eq!(
            find_listen_addr(log).as_deref(),
            Some("/ip4/127.0.0.1/tcp/40123/p2p/12D3KooWabc")
        );
    }

    #[test]
    fn listen_addr_skips_non_loopback() {
        let log = "Listening on /ip4/10.0.0.2/tcp/1/p2p/X\nListening on /ip4/127.0.0.1/tcp/2/p2p/Y\u{1b}[0m\n";
        assert_eq!(
            find_listen_addr(log).as_deref(),
            Some("/ip4/127.0.0.1/tcp/2/p2p/Y")
        );
        assert_eq!(find_listen_addr("nothing here"), None);
    }

    #[test]
    fn model_list_lookup() {
        let models = serde_json::json!({"object": "list", "data": [{"id": "a"}, {"id": "b"}]});
        assert!(lists_model(&models, "b"));
        assert!(!lists_model(&models, "c"));
        assert!(!lists_model(&Value::Null, "a"));
    }
}
