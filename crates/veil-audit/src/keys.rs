//! The domain's Ed25519 signing key and its public form.
//!
//! The public key is written as a C2SP note verifier key: `<name>+<key id, 8 hex>+<base64(0x01 ||
//! public key)>`, where the key id is the first 4 bytes of `SHA-256(name || "\n" || 0x01 || key)`.
use std::fs;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::AuditError;

/// Algorithm byte of Ed25519 in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;

/// The domain's signing key.
pub struct DomainKey {
    name: String,
    signing: SigningKey,
}

impl DomainKey {
    /// Loads the key at `path`, or creates it (mode 0600) when the file does not exist.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path, name: &str) -> Result<(DomainKey, bool), AuditError> {
        let err = |message: String| AuditError::Key {
            path: path.display().to_string(),
            message,
        };
        if path.exists() {
            let text = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let bytes = hex::decode(text.trim()).map_err(|e| err(format!("not hex: {e}")))?;
            let secret: [u8; 32] = bytes
                .try_into()
                .map_err(|_| err("expected 32 bytes".into()))?;
            return Ok((
                DomainKey {
                    name: name.into(),
                    signing: SigningKey::from_bytes(&secret),
                },
                false,
            ));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| err(format!("no OS randomness: {e}")))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| err(e.to_string()))?;
        file.write_all(hex::encode(secret).as_bytes())
            .map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        Ok((
            DomainKey {
                name: name.into(),
                signing: SigningKey::from_bytes(&secret),
            },
            true,
        ))
    }

    /// A fresh key (not yet saved).
    pub fn generate(name: &str) -> Result<DomainKey, AuditError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| AuditError::Key {
            path: String::new(),
            message: format!("no OS randomness: {e}"),
        })?;
        Ok(DomainKey {
            name: name.into(),
            signing: SigningKey::from_bytes(&secret),
        })
    }

    /// Writes the key to a new file at `path` (mode 0600, synced); fails if the file exists.
    pub fn save_new(&self, path: &Path) -> Result<(), AuditError> {
        let err = |message: String| AuditError::Key {
            path: path.display().to_string(),
            message,
        };
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| err(e.to_string()))?;
        file.write_all(hex::encode(self.signing.to_bytes()).as_bytes())
            .map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key: self.signing.verifying_key(),
        }
    }
}

/// A public key that verifies entries and checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key: VerifyingKey,
}

impl VerifierKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte C2SP key id.
    pub fn key_id(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update(b"\n");
        h.update([ALG_ED25519]);
        h.update(self.key.as_bytes());
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// `SHA256:<hex>` of the raw public key: what a reviewer compares when the key is handed over
    /// out of band.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            hex::encode(Sha256::digest(self.key.as_bytes()))
        )
    }

    /// Parses `<name>+<keyid hex>+<base64(0x01 || key)>`.
    pub fn parse(text: &str) -> Result<VerifierKey, AuditError> {
        let bad = |m: &str| AuditError::BadPublicKey(m.into());
        let text = text.trim();
        // Names never contain '+', but standard base64 may, so split from the left.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<base64 key>"));
        };
        let raw = B64.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 note key"));
        }
        let bytes: [u8; 32] = raw[1..].try_into().expect("length checked");
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 point"))?;
        let vk = VerifierKey {
            name: name.into(),
            key,
        };
        if hex::encode(vk.key_id()) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(vk)
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify(message, &sig).is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(raw)
        )
    }
}
