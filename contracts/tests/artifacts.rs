//! The committed artifacts that the bindings are generated from must match the Solidity sources.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CONTRACTS: [&str; 2] = ["PaymentChannels", "TestUSD"];

#[test]
fn committed_artifacts_match_fresh_compile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    let cache = scratch.path().join("cache");

    let status = Command::new(root.join("bin/foundry-tool"))
        .args([
            "forge", "build", "--skip", "test", "--skip", "script", "--out",
        ])
        .arg(&out)
        .arg("--cache-path")
        .arg(&cache)
        .current_dir(root)
        .status()
        .expect("run contracts/bin/foundry-tool (needs bash)");
    assert!(
        status.success(),
        "forge build failed; run scripts/contracts-toolchain.sh first if forge is missing"
    );

    for name in CONTRACTS {
        let fresh = read_json(&out.join(format!("{name}.sol/{name}.json")));
        let committed = read_json(&root.join(format!("artifacts/{name}.json")));
        for field in ["abi", "bytecode", "deployedBytecode"] {
            let fresh_field = if field == "abi" {
                &fresh[field]
            } else {
                &fresh[field]["object"]
            };
            let committed_field = if field == "abi" {
                &committed[field]
            } else {
                &committed[field]["object"]
            };
            assert_eq!(
                fresh_field, committed_field,
                "{name}: {field} in contracts/artifacts/{name}.json differs from a fresh compile; run scripts/contracts-artifacts.sh and commit the result"
            );
        }
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap()
}
