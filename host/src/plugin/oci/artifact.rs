//! The CNCF Wasm OCI artifact layout: an image manifest whose config has media type
//! `application/vnd.wasm.config.v0+json` and whose one layer is `application/wasm`. Anything
//! else is refused by name.

use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};

use super::error::{PullError, PullFailure};

/// The config media type of a Wasm artifact.
pub(super) const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of its one layer, the component.
pub(super) const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// The component layer of a manifest's bytes, checked: an OCI image manifest with the Wasm
/// config media type and one `application/wasm` layer of at most `limit` bytes (checked on the
/// manifest, before a byte of the layer is downloaded).
pub(super) fn component_layer(manifest: &[u8], limit: u64) -> Result<OciDescriptor, PullError> {
    let media = |m: String| PullError::new(PullFailure::MediaType, m);
    let doc: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| media(format!("the manifest is not JSON: {e}")))?;
    let declared = doc.get("mediaType").and_then(serde_json::Value::as_str);
    if declared.is_some_and(|m| m != OCI_IMAGE_MEDIA_TYPE) || doc.get("manifests").is_some() {
        return Err(media(format!(
            "it is {}, not a Wasm component artifact (an OCI image manifest with config {CONFIG_MEDIA_TYPE})",
            declared.unwrap_or("an image index")
        )));
    }
    let m: OciImageManifest =
        serde_json::from_value(doc).map_err(|e| media(format!("the manifest is not an OCI image manifest: {e}")))?;
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(media(format!(
            "its config media type is {}, not {CONFIG_MEDIA_TYPE}: not a Wasm component artifact",
            m.config.media_type
        )));
    }
    let [layer] = &m.layers[..] else {
        return Err(media(format!(
            "it has {} layers; a Wasm component artifact has one ({LAYER_MEDIA_TYPE})",
            m.layers.len()
        )));
    };
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(media(format!("its layer is {}, not {LAYER_MEDIA_TYPE}", layer.media_type)));
    }
    if !super::source::is_sha256(&layer.digest) {
        return Err(media(format!("its layer digest {} is not sha256", layer.digest)));
    }
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > limit {
        return Err(PullError::new(
            PullFailure::TooBig,
            format!("its component is {size} bytes, over the plugin file limit of {limit} bytes; not downloaded"),
        ));
    }
    Ok(layer.clone())
}

/// The config blob pushed with a component: what the artifact layout asks for.
pub(super) fn config_blob(layer_digest: &str) -> Vec<u8> {
    serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn mk_manifest(config: &str, layers: &[(&str, u64)]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(t, size)| serde_json::json!({"mediaType": t, "digest": format!("sha256:{HEX}"), "size": size}))
            .collect();
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {"mediaType": config, "digest": format!("sha256:{HEX}"), "size": 2},
            "layers": layers,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_wasm_artifact_gives_its_layer() {
        let layer = component_layer(&mk_manifest(CONFIG_MEDIA_TYPE, &[(LAYER_MEDIA_TYPE, 1000)]), 1000).expect("ok");
        assert_eq!((layer.size, layer.digest.as_str()), (1000, format!("sha256:{HEX}").as_str()));
    }

    #[test]
    fn other_layouts_are_refused_by_name_and_size_before_download() {
        let cases: [(Vec<u8>, PullFailure, &str); 5] = [
            (
                mk_manifest("application/vnd.oci.image.config.v1+json", &[(LAYER_MEDIA_TYPE, 1)]),
                PullFailure::MediaType,
                "vnd.oci.image.config",
            ),
            (
                mk_manifest(CONFIG_MEDIA_TYPE, &[(LAYER_MEDIA_TYPE, 1), (LAYER_MEDIA_TYPE, 1)]),
                PullFailure::MediaType,
                "2 layers",
            ),
            (
                mk_manifest(CONFIG_MEDIA_TYPE, &[("application/vnd.oci.image.layer.v1.tar", 1)]),
                PullFailure::MediaType,
                "layer.v1.tar",
            ),
            (mk_manifest(CONFIG_MEDIA_TYPE, &[(LAYER_MEDIA_TYPE, 1001)]), PullFailure::TooBig, "1001 bytes"),
            (
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec(),
                PullFailure::MediaType,
                "image.index",
            ),
        ];
        for (manifest, failure, says) in cases {
            let err = component_layer(&manifest, 1000).expect_err(says);
            assert_eq!(err.failure, failure, "{says}: {err}");
            assert!(err.message.contains(says), "{says}: {err}");
        }
    }
}
