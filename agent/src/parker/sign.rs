//! Ed25519 response signing in the two key formats Parker brokers use, and signify key
//! generation.
//!
//! - A raw 32-byte seed written as 64 hex characters: the signature line is the base64 of the
//!   bare 64-byte signature.
//! - A signify (OpenBSD, also `usign` on the nodes) secret key without passphrase, base64 of
//!   104 bytes `"Ed" "BK" kdfrounds:u32be salt[16] checksum[8] keynum[8] seckey[64]`: the
//!   signature line is a standard signify signature, base64 of `"Ed" keynum sig[64]`, which is
//!   what deployed nodes check with `usign -V`.

use anyhow::{Context, Result, bail, ensure};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha512};
use std::path::Path;

const PKALG: &[u8; 2] = b"Ed";
const KDFALG: &[u8; 2] = b"BK";
const SECKEY_LEN: usize = 104;
const PUBKEY_LEN: usize = 42;

/// A loaded signing key and the signature format it implies.
pub struct ResponseSigner {
    key: SigningKey,
    /// `Some(keynum)` for signify keys: signatures carry the signify header.
    signify_keynum: Option<[u8; 8]>,
}

impl std::fmt::Debug for ResponseSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ResponseSigner")
            .field("format", &self.format_name())
            .finish_non_exhaustive()
    }
}

impl ResponseSigner {
    /// Parses `broker_signing_key`: 64 hex characters (raw seed) or base64 of a signify secret
    /// key. A whole signify `.sec` file (comment line + key line) is accepted too.
    pub fn parse(text: &str) -> Result<ResponseSigner> {
        let text = key_line(text);
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut seed = [0u8; 32];
            for (i, byte) in seed.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                    .context("signing key: invalid hex")?;
            }
            return Ok(ResponseSigner {
                key: SigningKey::from_bytes(&seed),
                signify_keynum: None,
            });
        }
        let raw = B64.decode(text).map_err(|_| {
            anyhow::anyhow!(
                "signing key: expected 64 hex characters (raw Ed25519 seed) or the base64 of a \
                 signify secret key; got {} characters that are neither",
                text.len()
            )
        })?;
        parse_signify_secret(&raw)
    }

    /// Reads a key from a file holding either format (e.g. the `.sec` from `exitd keygen`).
    pub fn load(path: &Path) -> Result<ResponseSigner> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read signing key file {}", path.display()))?;
        ResponseSigner::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The signature line for `message` (the JSON line including its `\n`).
    pub fn signature_line(&self, message: &[u8]) -> String {
        let signature = self.key.sign(message).to_bytes();
        match self.signify_keynum {
            None => B64.encode(signature),
            Some(keynum) => {
                let mut blob = Vec::with_capacity(74);
                blob.extend_from_slice(PKALG);
                blob.extend_from_slice(&keynum);
                blob.extend_from_slice(&signature);
                B64.encode(blob)
            }
        }
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn format_name(&self) -> &'static str {
        match self.signify_keynum {
            None => "raw Ed25519 seed",
            Some(_) => "signify",
        }
    }
}

/// The key itself when `text` is a signify file ("untrusted comment: ..." then the key).
fn key_line(text: &str) -> &str {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [comment, key] if comment.starts_with("untrusted comment:") => key,
        _ => text.trim(),
    }
}

fn parse_signify_secret(raw: &[u8]) -> Result<ResponseSigner> {
    ensure!(
        raw.len() == SECKEY_LEN,
        "signing key: expected 64 hex characters (raw Ed25519 seed) or the base64 of a signify \
         secret key ({SECKEY_LEN} bytes); this one decodes to {} bytes",
        raw.len()
    );
    ensure!(
        &raw[0..2] == PKALG && &raw[2..4] == KDFALG,
        "signing key: not a signify Ed25519 secret key (algorithm bytes {:?})",
        String::from_utf8_lossy(&raw[0..4])
    );
    let rounds = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    if rounds != 0 {
        bail!(
            "signing key: the signify secret key is protected by a passphrase (kdfrounds = \
             {rounds}); the broker needs one without (`signify -G -n` or `exitd keygen`)"
        );
    }
    let checksum = &raw[24..32];
    let keynum: [u8; 8] = raw[32..40].try_into().context("keynum")?;
    let seckey = &raw[40..104];
    ensure!(
        Sha512::digest(seckey)[..8] == *checksum,
        "signing key: signify checksum mismatch (the key is corrupt or was mistyped)"
    );
    let seed: [u8; 32] = seckey[..32].try_into().context("seed")?;
    let key = SigningKey::from_bytes(&seed);
    ensure!(
        key.verifying_key().to_bytes() == seckey[32..],
        "signing key: the public half stored in the signify secret key does not match its seed"
    );
    Ok(ResponseSigner {
        key,
        signify_keynum: Some(keynum),
    })
}

/// A freshly generated signify key pair, as file contents.
pub struct SignifyKeyPair {
    /// `.sec` file: comment line plus base64 secret key (also usable as `signing_key`).
    pub secret_file: String,
    /// `.pub` file for the nodes (`usign -V -p`).
    pub public_file: String,
    /// The base64 secret key alone.
    pub secret_b64: String,
}

/// Generates a signify key pair without passphrase from the OS random source.
pub fn generate_signify(comment: &str) -> Result<SignifyKeyPair> {
    let mut random = [0u8; 32 + 16 + 8];
    fill_random(&mut random)?;
    let (seed, rest) = random.split_at(32);
    let (salt, keynum) = rest.split_at(16);
    let seed: [u8; 32] = seed.try_into().context("seed")?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();

    let mut seckey = Vec::with_capacity(64);
    seckey.extend_from_slice(&seed);
    seckey.extend_from_slice(&public);
    let mut sec = Vec::with_capacity(SECKEY_LEN);
    sec.extend_from_slice(PKALG);
    sec.extend_from_slice(KDFALG);
    sec.extend_from_slice(&0u32.to_be_bytes());
    sec.extend_from_slice(salt);
    sec.extend_from_slice(&Sha512::digest(&seckey)[..8]);
    sec.extend_from_slice(keynum);
    sec.extend_from_slice(&seckey);

    let mut publ = Vec::with_capacity(PUBKEY_LEN);
    publ.extend_from_slice(PKALG);
    publ.extend_from_slice(keynum);
    publ.extend_from_slice(&public);

    let secret_b64 = B64.encode(&sec);
    Ok(SignifyKeyPair {
        secret_file: format!("untrusted comment: {comment} secret key\n{secret_b64}\n"),
        public_file: format!(
            "untrusted comment: {comment} public key\n{}\n",
            B64.encode(&publ)
        ),
        secret_b64,
    })
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable remainder of `buf`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("getrandom");
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_hex_seed_signs_with_bare_signature() {
        let signer = ResponseSigner::parse(&"11".repeat(32)).unwrap();
        let line = signer.signature_line(b"x\n");
        assert_eq!(B64.decode(&line).unwrap().len(), 64);
        assert_eq!(signer.format_name(), "raw Ed25519 seed");
    }

    #[test]
    fn generated_signify_key_round_trips_and_signs_with_header() {
        let pair = generate_signify("test").unwrap();
        let signer = ResponseSigner::parse(&pair.secret_b64).unwrap();
        let from_file = ResponseSigner::parse(&pair.secret_file).unwrap();
        assert_eq!(signer.public_key(), from_file.public_key());
        let sig = B64.decode(signer.signature_line(b"msg\n")).unwrap();
        assert_eq!(sig.len(), 74);
        assert_eq!(&sig[..2], b"Ed");
        let public_line = pair.public_file.lines().nth(1).unwrap();
        let public = B64.decode(public_line).unwrap();
        assert_eq!(
            &public[2..10],
            &sig[2..10],
            "keynum of key and signature agree"
        );
        assert_eq!(public[10..], signer.public_key());
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", ResponseSigner::parse(text).unwrap_err())
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        assert!(error_of("abc").contains("neither"), "{}", error_of("abc"));
        assert!(error_of(&B64.encode([0u8; 50])).contains("104 bytes"));
        let pair = generate_signify("t").unwrap();
        let mut raw = B64.decode(&pair.secret_b64).unwrap();
        raw[7] = 42;
        assert!(error_of(&B64.encode(&raw)).contains("passphrase"));
        raw[7] = 0;
        raw[50] ^= 1;
        assert!(error_of(&B64.encode(&raw)).contains("checksum"));
        raw[50] ^= 1;
        raw[0] = b'X';
        assert!(error_of(&B64.encode(&raw)).contains("not a signify"));
    }
}
