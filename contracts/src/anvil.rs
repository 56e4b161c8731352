//! A local anvil chain for tests: spawned from the npm-installed binary, killed on drop.
//!
//! The binary is `$SPARE_ANVIL` when set, else the platform package npm installed under
//! `contracts/node_modules/@foundry-rs/` (run `scripts/contracts-toolchain.sh`). The launcher in
//! `node_modules/.bin/anvil` is not used because killing it leaves the real anvil running.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;

use crate::error::{Error, Result};

/// Private keys of the first accounts anvil funds with 10 000 ETH each, derived from its default
/// mnemonic `test test test test test test test test test test test junk`.
pub const DEV_KEYS: [B256; 4] = [
    alloy::primitives::b256!("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
    alloy::primitives::b256!("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"),
    alloy::primitives::b256!("5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"),
    alloy::primitives::b256!("7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"),
];

/// How long to wait for anvil to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with a fresh port when another process takes the chosen one first.
const START_ATTEMPTS: usize = 5;

/// A running anvil process on a free loopback port.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
}

impl Anvil {
    /// Starts anvil with chain id 31337 on a free port of 127.0.0.1 and waits until it listens.
    pub fn spawn() -> Result<Self> {
        let binary = binary_path();
        if !binary.is_file() {
            return Err(Error::AnvilMissing { path: binary });
        }

        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let child = Command::new(&binary)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--chain-id",
                    "31337",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|err| {
                    Error::AnvilStart(format!("cannot run {}: {err}", binary.display()))
                })?;
            let mut anvil = Self { child, port };
            match anvil.wait_until_listening() {
                Ok(()) => return Ok(anvil),
                Err(message) => last_error = message,
            }
        }
        Err(Error::AnvilStart(last_error))
    }

    /// HTTP JSON-RPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns the signer of funded dev account `index` (0 to 3).
    pub fn dev_signer(index: usize) -> Result<PrivateKeySigner> {
        let key = DEV_KEYS
            .get(index)
            .ok_or_else(|| Error::AnvilStart(format!("no dev account {index}")))?;
        PrivateKeySigner::from_bytes(key)
            .map_err(|err| Error::AnvilStart(format!("invalid dev key: {err}")))
    }

    fn wait_until_listening(&mut self) -> std::result::Result<(), String> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("anvil exited with {status} on port {}", self.port));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "anvil did not listen on port {} within {START_TIMEOUT:?}",
            self.port
        ))
    }
}

// NOTE: Drop does not run when the test process is killed by a signal, which leaves anvil running
// until it is stopped by hand.
impl Drop for Anvil {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill() {
            tracing::warn!(port = self.port, %err, "Failed to kill anvil");
        }
        let _ = self.child.wait();
    }
}

/// Returns where the anvil binary is expected.
pub fn binary_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SPARE_ANVIL") {
        return PathBuf::from(path);
    }
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("node_modules/@foundry-rs")
        .join(format!("anvil-{os}-{arch}"))
        .join("bin/anvil")
}

/// Asks the OS for a free port. Another process may take it before anvil binds, so
/// [`Anvil::spawn`] retries with a new port when anvil exits.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|err| Error::AnvilStart(format!("cannot find a free port: {err}")))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|err| Error::AnvilStart(format!("cannot find a free port: {err}")))
}
