//! The local API key: creating and loading it, and checking the key a client sends.
//!
//! A key is `sk-spare-` followed by 64 hex characters (32 random bytes); keys of 43 base64url
//! characters are accepted as well. It lives in a 0600 file in the data dir.

use std::path::Path;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use rand::RngCore;
use spare_gossip::identity::{create_secret_file, read_secret_file};
use subtle::ConstantTimeEq;

use crate::GatewayError;

/// The prefix of every gateway API key.
pub const API_KEY_PREFIX: &str = "sk-spare-";

/// Generates a new random API key.
pub fn generate_api_key() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    format!("{API_KEY_PREFIX}{}", hex::encode(secret))
}

/// Checks whether `key` has the form `sk-spare-<64 hex>` or `sk-spare-<43 base64url>`.
pub fn is_valid_api_key(key: &str) -> bool {
    let Some(secret) = key.strip_prefix(API_KEY_PREFIX) else {
        return false;
    };
    let is_hex = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    let is_base64url = secret.len() == 43 && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    is_hex || is_base64url
}

/// Loads the API key from `path`, or creates one with mode 0600 on first run.
///
/// Returns the key and whether it was created now, so the caller can show a new key once.
pub fn load_or_create_api_key(path: &Path) -> Result<(String, bool), GatewayError> {
    let key_error = |reason: String| GatewayError::ApiKey { path: path.to_path_buf(), reason };

    match read_secret_file(path).map_err(|e| key_error(e.to_string()))? {
        Some(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| key_error("is not UTF-8; move it away to create a new key".into()))?;
            let key = text.trim().to_owned();
            if !is_valid_api_key(&key) {
                return Err(key_error(format!("does not contain a key of the form {API_KEY_PREFIX}<64 hex characters>; move it away to create a new key")));
            }
            Ok((key, false))
        }
        None => {
            let key = generate_api_key();
            create_secret_file(path, key.as_bytes()).map_err(|e| key_error(e.to_string()))?;
            tracing::info!(path = %path.display(), "Created a new API key");
            Ok((key, true))
        }
    }
}

/// Returns the key a client sent, from `Authorization: Bearer KEY` or `x-api-key: KEY`.
pub(crate) fn key_from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = value.trim().splitn(2, ' ');
        let scheme = parts.next().unwrap_or_default();
        let key = parts.next().unwrap_or_default().trim();
        if scheme.eq_ignore_ascii_case("bearer") && !key.is_empty() {
            return Some(key);
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|key| !key.is_empty())
}

/// Compares two keys in time that depends only on their lengths, not on where they differ.
pub(crate) fn keys_match(expected: &str, received: &str) -> bool {
    expected.as_bytes().ct_eq(received.as_bytes()).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn generated_key_is_valid() {
        let key = generate_api_key();
        assert!(is_valid_api_key(&key), "{key}");
        assert_ne!(key, generate_api_key());
    }

    #[test]
    fn key_formats_are_checked() {
        assert!(is_valid_api_key(&format!("sk-spare-{}", "a".repeat(64))));
        assert!(is_valid_api_key(&format!("sk-spare-{}", "A_-".repeat(14) + "x")));
        assert!(!is_valid_api_key(&format!("sk-spare-{}", "g".repeat(64))));
        assert!(!is_valid_api_key(&format!("sk-other-{}", "a".repeat(64))));
        assert!(!is_valid_api_key("sk-spare-"));
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-key");

        let (first, created) = load_or_create_api_key(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let (second, created) = load_or_create_api_key(&path).unwrap();
        assert!(!created);
        assert_eq!(first, second);
    }

    #[test]
    fn key_file_with_garbage_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-key");
        create_secret_file(&path, b"hunter2").unwrap();

        let error = load_or_create_api_key(&path).unwrap_err().to_string();
        assert!(error.contains("move it away"), "{error}");
    }

    #[test]
    fn key_is_read_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(key_from_headers(&headers), None);

        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk-spare-abc"));
        assert_eq!(key_from_headers(&headers), Some("sk-spare-abc"));

        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(key_from_headers(&headers), None);

        headers.insert("x-api-key", HeaderValue::from_static("sk-spare-def"));
        assert_eq!(key_from_headers(&headers), Some("sk-spare-def"));
    }

    #[test]
    fn keys_match_only_when_equal() {
        assert!(keys_match("sk-spare-abc", "sk-spare-abc"));
        assert!(!keys_match("sk-spare-abc", "sk-spare-abd"));
        assert!(!keys_match("sk-spare-abc", "sk-spare-ab"));
        assert!(!keys_match("sk-spare-abc", ""));
    }
}
