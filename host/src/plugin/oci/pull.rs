//! Pulling one plugin version from a registry: the manifest (its layout checked and its size
//! read before anything else is downloaded), the cosign signatures of its digest, verified
//! against the source's keys, and only then the component, checked against its digest.

use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::Client;
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;

use super::artifact::component_layer;
use super::error::{PullError, PullFailure, classify};
use super::signature::{
    MAX_PAYLOAD_BYTES, PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION, Signed, TrustedKey, VerifyPolicy, signature_tag,
    verify,
};
use super::source::Source;
use crate::plugin::digest::sha256_hex;

/// A verified plugin version.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest (what a tag points at, what is signed).
    pub manifest_digest: String,
    /// The component's digest (`sha256:<hex>`), as the plugin's digest elsewhere.
    pub layer_digest: String,
    /// The component.
    pub bytes: Vec<u8>,
    /// The key whose signature was verified; None when verification is off, or optional and
    /// the version is unsigned.
    pub signer: Option<String>,
}

/// What a pull needs: the client, the credentials for the source's registry, the keys and
/// policy of the source, and the plugin file limit.
pub struct Pull<'a> {
    /// The registry client.
    pub client: &'a Client,
    /// The credentials.
    pub auth: &'a RegistryAuth,
    /// Trusted keys.
    pub keys: &'a [TrustedKey],
    /// What is asked of signatures.
    pub policy: VerifyPolicy,
    /// The largest component taken.
    pub limit: u64,
}

impl Pull<'_> {
    /// The digest the source's tag points at now (a HEAD request).
    pub async fn current_digest(&self, source: &Source) -> Result<String, PullError> {
        if let Some(pin) = source.pinned() {
            return Ok(pin.to_string());
        }
        self.client.fetch_manifest_digest(source.reference(), self.auth).await.map_err(|e| classify(&e).at(source))
    }

    /// Pulls and verifies the version `source` names now.
    pub async fn pull(&self, source: &Source) -> Result<Pulled, PullError> {
        self.pull_inner(source).await.map_err(|e| e.at(source))
    }

    async fn pull_inner(&self, source: &Source) -> Result<Pulled, PullError> {
        let accepted = [OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE];
        let (manifest, digest) =
            self.client.pull_manifest_raw(source.reference(), self.auth, &accepted).await.map_err(|e| classify(&e))?;
        let actual = format!("sha256:{}", sha256_hex(&manifest));
        if actual != digest || source.pinned().is_some_and(|pin| pin != actual) {
            return Err(PullError::new(
                PullFailure::DigestMismatch,
                format!("the manifest served hashes to {actual}, not {}", source.pinned().unwrap_or(&digest)),
            ));
        }
        let layer = component_layer(&manifest, self.limit)?;
        let signer = match self.policy {
            VerifyPolicy::Off => None,
            policy => {
                let signed = self.signatures(source, &digest).await?;
                match verify(&signed, self.keys, &digest) {
                    Ok(key) => Some(key),
                    Err(e) if e.failure == PullFailure::Unsigned && policy == VerifyPolicy::Optional => None,
                    Err(e) => return Err(e),
                }
            }
        };
        let bytes = self.blob(&source.at_digest(&digest), &layer, self.limit).await?;
        let got = format!("sha256:{}", sha256_hex(&bytes));
        if got != layer.digest {
            return Err(PullError::new(
                PullFailure::DigestMismatch,
                format!("the component served hashes to {got}, not to its digest {}", layer.digest),
            ));
        }
        Ok(Pulled { manifest_digest: digest, layer_digest: layer.digest, bytes, signer })
    }

    /// The cosign signatures stored for `digest` (none when there is no signature tag).
    async fn signatures(&self, source: &Source, digest: &str) -> Result<Vec<Signed>, PullError> {
        let at = source.at_tag(&signature_tag(digest));
        let raw = match self.client.pull_manifest_raw(&at, self.auth, &[OCI_IMAGE_MEDIA_TYPE]).await {
            Ok((raw, _)) => raw,
            Err(e) => {
                let e = classify(&e);
                return if e.failure == PullFailure::NotFound { Ok(Vec::new()) } else { Err(e) };
            }
        };
        let manifest: OciImageManifest = serde_json::from_slice(&raw).map_err(|e| {
            PullError::new(PullFailure::BadSignature, format!("the signature manifest is unreadable: {e}"))
        })?;
        let mut out = Vec::new();
        for layer in manifest.layers.iter().filter(|l| l.media_type == PAYLOAD_MEDIA_TYPE) {
            let Some(signature) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
                continue;
            };
            let payload = self.blob(&at, layer, MAX_PAYLOAD_BYTES).await?;
            if format!("sha256:{}", sha256_hex(&payload)) != layer.digest {
                continue;
            }
            out.push(Signed { payload, signature: signature.clone() });
        }
        Ok(out)
    }

    /// A blob of at most `limit` bytes (its declared size is checked first, and a server that
    /// sends more is cut off).
    async fn blob(&self, at: &oci_client::Reference, layer: &OciDescriptor, limit: u64) -> Result<Vec<u8>, PullError> {
        if u64::try_from(layer.size).unwrap_or(u64::MAX) > limit {
            return Err(PullError::new(PullFailure::TooBig, format!("a blob of {} bytes is over {limit}", layer.size)));
        }
        let mut out = Capped { bytes: Vec::new(), limit };
        self.client.pull_blob(at, layer, &mut out).await.map_err(|e| {
            if out.bytes.len() as u64 >= limit {
                PullError::new(
                    PullFailure::TooBig,
                    format!("the registry sent more than {limit} bytes for {}", layer.digest),
                )
            } else {
                classify(&e)
            }
        })?;
        Ok(out.bytes)
    }
}

/// A buffer that refuses to grow past its limit.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::other("over the size limit")));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
