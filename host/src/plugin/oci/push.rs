//! Publishing a component as a CNCF Wasm OCI artifact (`downsync plugin push`).

use oci_client::Client;
use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

use super::artifact::{CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, config_blob};
use super::error::{PullError, classify};
use super::source::Source;
use crate::plugin::digest::sha256_hex;

/// Pushes `component` to `source` (a tag) and returns the manifest digest it got: what
/// `cosign sign` and a pinned source name.
pub async fn push(
    client: &Client,
    auth: &RegistryAuth,
    source: &Source,
    component: Vec<u8>,
) -> Result<String, PullError> {
    let layer_digest = format!("sha256:{}", sha256_hex(&component));
    let layer = ImageLayer::new(component, LAYER_MEDIA_TYPE.to_string(), None);
    let config = Config::new(config_blob(&layer_digest), CONFIG_MEDIA_TYPE.to_string(), None);
    client.push(source.reference(), &[layer], config, auth, None).await.map_err(|e| classify(&e).at(source))?;
    client.fetch_manifest_digest(source.reference(), auth).await.map_err(|e| classify(&e).at(source))
}
