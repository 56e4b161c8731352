//! The `spare` binary rejects bad settings before it writes keys into the data dir.

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn spare(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spare"));
    command.arg("--data-dir").arg(data_dir).env_remove("SPARE_API_KEY").env("SPARE_LOG", "warn");
    command
}

#[test]
fn gateway_on_busy_port_creates_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();

    let output = spare(dir.path()).args(["gateway", "--no-mdns", "--listen", &addr.to_string()]).output().unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(!dir.path().join("gateway").exists(), "the gateway wrote to its data dir before failing");
    assert!(output.stdout.is_empty(), "the gateway printed a key before failing");
}

#[test]
fn node_without_upstream_creates_no_identity() {
    let dir = tempfile::tempdir().unwrap();

    let output = spare(dir.path()).args(["node", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]).env_remove("SPARE_UPSTREAM").output().unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--upstream"), "{stderr}");
    assert!(!dir.path().join("node").exists(), "the node wrote to its data dir before failing");
}

#[test]
fn unknown_config_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[node]\nupstream = \"http://127.0.0.1:1/v1\"\n").unwrap();

    let output = spare(dir.path()).arg("--config").arg(&config).args(["node", "--no-mdns"]).output().unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("config.toml"), "{stderr}");
    assert!(stderr.contains("upstream"), "{stderr}");
}
