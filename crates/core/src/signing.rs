//! Report signatures: a cluster proves that a report is its own.
//!
//! Each cluster keeps one Ed25519 key pair in its bucket (`usage/signing_key.json`, created
//! with create-if-absent like the seed, so every replica signs with the same key). Reports are
//! signed over their exact bytes and the signature travels in one header,
//!
//! ```text
//! Reporter-Signature: ed25519 key=<public key, 64 hex> sig=<signature, 128 hex>
//! ```
//!
//! A receiver pins a cluster's public key on its first signed report and from then on refuses
//! any report for that cluster ID that is not signed by that key. The private key is never
//! logged, never in a report, never sent; whoever can read the bucket can sign for the cluster,
//! which is the same trust the bucket already holds (it can rewrite the seed).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The header that carries a report's signature.
pub const HEADER: &str = "reporter-signature";

/// A cluster's key pair.
#[derive(Clone)]
pub struct ClusterKey(SigningKey);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        write!(
            f,
            "ClusterKey(public {})",
            hex(self.0.verifying_key().as_bytes())
        )
    }
}

/// Why an object or a header is not a key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `ed25519 key=<hex> sig=<hex>`.
    #[error("the Reporter-Signature header is not \"ed25519 key=<64 hex> sig=<128 hex>\"")]
    Malformed,
    /// The signature does not verify over the body with the key given.
    #[error("the Reporter-Signature does not verify over the body")]
    Invalid,
    /// The key object is not one this version writes.
    #[error("not a signing key object: {0}")]
    Corrupted(&'static str),
    /// The system's random source failed.
    #[error("cannot draw a new key: {0}")]
    Random(#[source] getrandom::Error),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyObject {
    /// The 32-byte secret, hex.
    ed25519: String,
}

impl ClusterKey {
    /// A new key pair from the system's random source.
    ///
    /// # Errors
    ///
    /// [`SignatureError`] if the system's random source cannot be read.
    pub fn generate() -> Result<Self, SignatureError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(SignatureError::Random)?;
        Ok(ClusterKey(SigningKey::from_bytes(&secret)))
    }

    /// The object kept in the bucket.
    pub fn to_object(&self) -> Vec<u8> {
        let obj = KeyObject {
            ed25519: hex(self.0.as_bytes()),
        };
        serde_json::to_vec(&obj).unwrap_or_default()
    }

    /// Reads the object kept in the bucket.
    ///
    /// # Errors
    ///
    /// [`SignatureError`] if the bytes are not a key object this crate wrote.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let obj: KeyObject =
            serde_json::from_slice(bytes).map_err(|_| SignatureError::Corrupted("not JSON"))?;
        let secret: [u8; 32] = unhex(&obj.ed25519)
            .and_then(|b| b.try_into().ok())
            .ok_or(SignatureError::Corrupted("ed25519 is not 64 hex digits"))?;
        Ok(ClusterKey(SigningKey::from_bytes(&secret)))
    }

    /// The public half, as the receiver pins it.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The `Reporter-Signature` header value for `body`.
    pub fn header(&self, body: &[u8]) -> String {
        let sig = self.0.sign(body);
        format!(
            "ed25519 key={} sig={}",
            hex(self.0.verifying_key().as_bytes()),
            hex(&sig.to_bytes())
        )
    }
}

/// Checks a `Reporter-Signature` header over `body`; the public key it was signed with.
///
/// # Errors
///
/// [`SignatureError`]: a header that is not `ed25519 key=<hex> sig=<hex>`, or a signature
/// that does not verify over `body` with that key.
pub fn verify(header: &str, body: &[u8]) -> Result<[u8; 32], SignatureError> {
    let mut parts = header.split_ascii_whitespace();
    if !parts
        .next()
        .is_some_and(|s| s.eq_ignore_ascii_case("ed25519"))
    {
        return Err(SignatureError::Malformed);
    }
    let (mut key, mut sig) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("key", v)) => key = unhex(v).and_then(|b| <[u8; 32]>::try_from(b).ok()),
            Some(("sig", v)) => sig = unhex(v).and_then(|b| <[u8; 64]>::try_from(b).ok()),
            _ => return Err(SignatureError::Malformed),
        }
    }
    let (Some(key), Some(sig)) = (key, sig) else {
        return Err(SignatureError::Malformed);
    };
    let verifying = VerifyingKey::from_bytes(&key).map_err(|_| SignatureError::Invalid)?;
    verifying
        .verify_strict(body, &Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::Invalid)?;
    Ok(key)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Hex to bytes, `None` unless it is whole pairs of hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_over_its_own_bytes_and_key() {
        let k = ClusterKey::generate().unwrap();
        let again = ClusterKey::parse(&k.to_object()).unwrap();
        assert_eq!(k.public(), again.public());
        let body = br#"{"clusterID":"x"}"#;
        let h = k.header(body);
        assert_eq!(verify(&h, body), Ok(k.public()));
        assert_eq!(
            verify(&h, br#"{"clusterID":"y"}"#),
            Err(SignatureError::Invalid)
        );
        // Another key's public half with this signature: refused.
        let other = ClusterKey::generate().unwrap();
        let forged = h.replace(&hex(&k.public()), &hex(&other.public()));
        assert_eq!(verify(&forged, body), Err(SignatureError::Invalid));
        for bad in [
            "",
            "ed25519",
            "rsa key=00 sig=00",
            "ed25519 key=zz sig=00",
            "ed25519 key=00",
        ] {
            assert_eq!(verify(bad, body), Err(SignatureError::Malformed), "{bad}");
        }
        assert!(
            !format!("{k:?}").contains(&hex(k.0.as_bytes())),
            "the secret never prints"
        );
        assert!(ClusterKey::parse(b"{\"ed25519\":\"12\"}").is_err());
    }
}
