//! Cosign signatures with offline keys: the signature manifest at tag `sha256-<hex>.sig`
//! holds simple-signing payloads naming the signed manifest digest, each with an ECDSA P-256
//! signature in the `dev.cosignproject.cosign/signature` annotation. A version is trusted
//! when one payload names its digest and one configured key verified that payload.
//!
//! Keyless verification (Fulcio certificates, Rekor bundles) would be another [`TrustedKey`]
//! source beside the key files; nothing else here would change.

use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::{DerSignature, VerifyingKey, signature::Verifier as _};
use p256::pkcs8::DecodePublicKey as _;

use super::error::{PullError, PullFailure};

/// The media type of a cosign simple-signing payload layer.
pub(super) const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the base64 signature of the payload.
pub(super) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The largest signature payload read.
pub(super) const MAX_PAYLOAD_BYTES: u64 = 64 << 10;

/// What a source asks of signatures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VerifyPolicy {
    /// A signature by one of the keys is needed; anything else is refused (the default).
    #[default]
    Required,
    /// A version without a signature is taken (with a warning); a wrong signature is refused.
    Optional,
    /// Signatures are not looked at.
    Off,
}

/// A public key trusted to sign a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key file, as `/plugins` shows the signer.
    pub name: String,
    key: VerifyingKey,
}

impl TrustedKey {
    /// Reads a PEM public key (`cosign generate-key-pair`'s `cosign.pub`: ECDSA P-256).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::from_pem(&path.display().to_string(), &text)
    }

    /// A key from PEM text.
    pub fn from_pem(name: &str, pem: &str) -> Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| format!("not an ECDSA P-256 public key in PEM (a cosign.pub): {e}"))?;
        Ok(Self { name: name.to_string(), key })
    }

    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        DerSignature::from_bytes(signature).is_ok_and(|sig| self.key.verify(payload, &sig).is_ok())
    }
}

/// One signature layer of a signature manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Signed {
    /// The simple-signing payload.
    pub payload: Vec<u8>,
    /// The signature annotation (base64 DER).
    pub signature: String,
}

/// The tag cosign stores the signatures of `manifest_digest` under.
pub(super) fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replacen(':', "-", 1))
}

/// The key that signed `manifest_digest` in one of `signed`, or why none did.
pub(super) fn verify(signed: &[Signed], keys: &[TrustedKey], manifest_digest: &str) -> Result<String, PullError> {
    if signed.is_empty() {
        return Err(PullError::new(PullFailure::Unsigned, format!("{manifest_digest} has no cosign signature")));
    }
    let mut other_digest = None;
    for s in signed {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(s.signature.trim()) else { continue };
        for key in keys.iter().filter(|k| k.verifies(&s.payload, &sig)) {
            match signed_digest(&s.payload) {
                Some(d) if d == manifest_digest => return Ok(key.name.clone()),
                d => other_digest = Some((key.name.clone(), d.unwrap_or_default())),
            }
        }
    }
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let message = match other_digest {
        Some((key, d)) => format!("the signature by {key} is for {d:?}, not for {manifest_digest}"),
        None => format!(
            "{manifest_digest} is signed ({} signature(s)), but by none of the trusted keys ({})",
            signed.len(),
            names.join(", ")
        ),
    };
    Err(PullError::new(PullFailure::BadSignature, message))
}

/// The manifest digest a simple-signing payload vouches for.
fn signed_digest(payload: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let critical = doc.get("critical")?;
    (critical.get("type")?.as_str()? == "cosign container image signature").then_some(())?;
    Some(critical.get("image")?.get("docker-manifest-digest")?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{SigningKey, signature::Signer as _};
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn mk_key(seed: u8, name: &str) -> (SigningKey, TrustedKey) {
        let signing = SigningKey::from_slice(&[seed; 32]).expect("key");
        let pem = signing.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem");
        (signing, TrustedKey::from_pem(name, &pem).expect("trusted"))
    }

    fn mk_signed(key: &SigningKey, digest: &str) -> Signed {
        let payload = serde_json::json!({
            "critical": {
                "identity": {"docker-reference": "127.0.0.1:5000/rules/stamp"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": null,
        })
        .to_string()
        .into_bytes();
        let sig: DerSignature = key.sign(&payload);
        Signed { payload, signature: base64::engine::general_purpose::STANDARD.encode(sig.as_bytes()) }
    }

    #[test]
    fn a_signature_by_a_trusted_key_for_this_digest_names_its_key() {
        let (a, trusted_a) = mk_key(1, "a.pub");
        let (_, trusted_b) = mk_key(2, "b.pub");
        let keys = [trusted_b, trusted_a];
        assert_eq!(verify(&[mk_signed(&a, DIGEST)], &keys, DIGEST), Ok("a.pub".to_string()));
        assert_eq!(signature_tag(DIGEST), format!("sha256-{}.sig", &DIGEST[7..]));
    }

    #[test]
    fn unsigned_other_keys_other_digests_and_tampered_payloads_are_refused() {
        let (a, trusted_a) = mk_key(1, "a.pub");
        let (b, _) = mk_key(2, "b.pub");
        let keys = [trusted_a];
        let unsigned = verify(&[], &keys, DIGEST).expect_err("unsigned");
        assert_eq!(unsigned.failure, PullFailure::Unsigned);
        let other_key = verify(&[mk_signed(&b, DIGEST)], &keys, DIGEST).expect_err("other key");
        assert_eq!(other_key.failure, PullFailure::BadSignature);
        assert!(other_key.message.contains("a.pub"), "{other_key}");
        let other = DIGEST.replace("0123", "ffff");
        let replayed = verify(&[mk_signed(&a, &other)], &keys, DIGEST).expect_err("another digest");
        assert!(replayed.message.contains("is for") && replayed.message.contains(&other), "{replayed}");
        let mut tampered = mk_signed(&a, DIGEST);
        tampered.payload[10] ^= 1;
        assert_eq!(verify(&[tampered], &keys, DIGEST).expect_err("tampered").failure, PullFailure::BadSignature);
    }

    #[test]
    fn a_key_file_that_is_not_a_p256_public_key_is_refused() {
        assert!(TrustedKey::from_pem("x", "not pem").expect_err("garbage").contains("P-256"));
        assert!(TrustedKey::load(Path::new("/nonexistent/cosign.pub")).expect_err("missing").contains("cannot read"));
    }
}
