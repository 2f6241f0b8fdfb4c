//! A plugin's registry source: `oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:DIGEST`.

use oci_client::Reference;

/// The scheme every registry source starts with.
pub(super) const SCHEME: &str = "oci://";

/// A parsed registry source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// As written, for messages and the status.
    text: String,
    reference: Reference,
}

impl Source {
    /// Parses `oci://REGISTRY/REPOSITORY:TAG` or `oci://REGISTRY/REPOSITORY@sha256:HEX`. The
    /// registry must be named (a host with a dot or a port, or `localhost`): a bare
    /// `repo:tag` would silently mean Docker Hub.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix(SCHEME) else {
            return Err(format!(
                "{text:?} is not a registry source: write oci://REGISTRY/REPOSITORY:TAG or …@sha256:DIGEST"
            ));
        };
        let host = rest.split('/').next().unwrap_or_default();
        let named = rest.contains('/') && (host.contains('.') || host.contains(':') || host == "localhost");
        if !named {
            return Err(format!(
                "{text:?} names no registry host: write oci://REGISTRY/REPOSITORY:TAG (for Docker Hub, oci://docker.io/…)"
            ));
        }
        let reference: Reference = rest.parse().map_err(|e| format!("{text:?} is not a valid reference: {e}"))?;
        if reference.tag().is_none() && reference.digest().is_none() {
            return Err(format!("{text:?} names no tag and no digest: add :TAG or @sha256:DIGEST"));
        }
        if let Some(d) = reference.digest()
            && !is_sha256(d)
        {
            return Err(format!("{text:?}: the digest must be sha256:<64 lowercase hex digits>"));
        }
        Ok(Self { text: text.to_string(), reference })
    }

    /// The reference to pull.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The registry host (with its port), as credentials and `registry.insecure` name it.
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The digest a pinned source names; such a source never changes.
    pub fn pinned(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// The same repository at `digest` (a manifest, or a cosign signature's tag).
    pub fn at_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            digest.to_string(),
        )
    }

    /// The same repository at `tag`.
    pub fn at_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            tag.to_string(),
        )
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits.
pub(super) fn is_sha256(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_and_digests_parse_and_name_their_registry() {
        let s = Source::parse("oci://127.0.0.1:5000/rules/stamp:v1").expect("tag");
        assert_eq!(
            (s.registry(), s.reference().repository(), s.reference().tag()),
            ("127.0.0.1:5000", "rules/stamp", Some("v1"))
        );
        assert_eq!(s.pinned(), None);
        assert_eq!(s.to_string(), "oci://127.0.0.1:5000/rules/stamp:v1");
        let pinned = Source::parse(&format!("oci://ghcr.io/acme/stamp@sha256:{HEX}")).expect("digest");
        assert_eq!(pinned.pinned(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(pinned.at_tag(&format!("sha256-{HEX}.sig")).tag(), Some(format!("sha256-{HEX}.sig").as_str()));
        assert!(Source::parse("oci://localhost/stamp:v2").is_ok());
    }

    #[test]
    fn sources_without_scheme_registry_tag_or_a_sha256_are_refused_by_name() {
        for (text, says) in [
            ("ghcr.io/acme/stamp:v1", "oci://"),
            ("oci://stamp:v1", "registry host"),
            ("oci://acme/stamp:v1", "registry host"),
            ("oci://ghcr.io/acme/stamp@sha256:abc", "not a valid reference"),
            ("oci://ghcr.io/acme/Stamp:v1", "not a valid reference"),
        ] {
            let err = Source::parse(text).expect_err(text);
            assert!(err.contains(says) && err.contains(text.trim_start_matches("oci://")), "{text}: {err}");
        }
    }
}
