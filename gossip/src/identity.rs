//! The peer's ed25519 identity, kept as a 0600 file in the data dir.
//!
//! One key serves as the libp2p identity (so the peer id is derived from it) and as the key
//! that signs offers and usage receipts, so a receiver can check that an offer came from the
//! peer it names.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::RngCore;

use crate::Error;

/// A peer's signing key and the same key as a libp2p keypair.
#[derive(Clone)]
pub struct Identity {
    /// Signs offers and receipts.
    pub signing_key: SigningKey,
    /// The libp2p identity derived from the same secret.
    pub keypair: libp2p::identity::Keypair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from a 32-byte ed25519 secret.
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, Error> {
        let signing_key = SigningKey::from_bytes(&secret);
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(secret)
            .map_err(|e| Error::Setup(format!("invalid ed25519 secret: {e}")))?;
        Ok(Self { signing_key, keypair })
    }

    /// Generates a fresh random identity (for tests and ephemeral peers).
    pub fn generate() -> Result<Self, Error> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// Loads the identity from `path`, creating it with mode 0600 on first run.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let secret = match read_secret_file(path)? {
            Some(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Error::Identity {
                path: path.to_path_buf(),
                reason: format!("expected 32 bytes, found {}; move the file away to create a new identity", bytes.len()),
            })?,
            None => {
                let mut secret = [0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                create_secret_file(path, &secret)?;
                tracing::info!(path = %path.display(), "Created a new peer identity");
                secret
            }
        };
        Self::from_secret(secret)
    }

    /// Returns the libp2p peer id of this identity.
    pub fn peer_id(&self) -> libp2p::PeerId {
        self.keypair.public().to_peer_id()
    }
}

/// Reads a secret file, or returns `None` when it does not exist.
///
/// Rejects a file that other users can read or write, as ssh does, because the secret may
/// already have leaked.
pub fn read_secret_file(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(identity_error(path, format!("cannot read: {e}"))),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(identity_error(path, format!("permissions are {mode:o}; run `chmod 600 {}`", path.display())));
    }
    fs::read(path).map(Some).map_err(|e| identity_error(path, format!("cannot read: {e}")))
}

/// Writes a new secret file with mode 0600, creating its folder with mode 0700.
///
/// Fails if the file already exists, so a secret is never overwritten.
pub fn create_secret_file(path: &Path, secret: &[u8]) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| identity_error(path, format!("cannot create folder: {e}")))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| identity_error(path, format!("cannot create: {e}")))?;
    file.write_all(secret).and_then(|()| file.sync_all()).map_err(|e| identity_error(path, format!("cannot write: {e}")))
}

fn identity_error(path: &Path, reason: String) -> Error {
    Error::Identity { path: PathBuf::from(path), reason }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("identity.key");

        let first = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let second = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.peer_id(), second.peer_id());
    }

    #[test]
    fn identity_readable_by_others_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        let err = Identity::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn identity_of_wrong_length_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        create_secret_file(&path, b"short").unwrap();
        assert!(Identity::load_or_create(&path).is_err());
    }

    #[test]
    fn signing_key_matches_peer_id() {
        let identity = Identity::generate().unwrap();
        let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(identity.signing_key.verifying_key().as_bytes()).unwrap();
        let peer_id = libp2p::identity::PublicKey::from(public).to_peer_id();
        assert_eq!(peer_id, identity.peer_id());
    }
}
