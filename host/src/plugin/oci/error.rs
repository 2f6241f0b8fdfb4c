//! Why a pull from a registry failed, by class (the metric's label), with a message naming the
//! source.

/// The class of a failed pull: the `reason` label of `downsync_plugin_pull_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The registry could not be reached (connection, TLS, timeout, a 5xx).
    Unreachable,
    /// The registry refused the credentials (401, 403).
    Unauthorized,
    /// The tag or digest does not exist.
    NotFound,
    /// Not a Wasm component artifact: another config or layer media type, or not one layer.
    MediaType,
    /// The component is larger than the plugin file limit.
    TooBig,
    /// The bytes do not hash to the digest that names them.
    DigestMismatch,
    /// Verification is required and there is no signature.
    Unsigned,
    /// Signed, but by none of the configured keys (or for another digest).
    BadSignature,
    /// A setting is wrong (a credentials, CA or key file that cannot be read).
    Setup,
}

impl PullFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MediaType => "media_type",
            Self::TooBig => "too_big",
            Self::DigestMismatch => "digest_mismatch",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::Setup => "setup",
        }
    }
}

/// A failed pull or push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    /// The class.
    pub failure: PullFailure,
    /// What happened, naming the source.
    pub message: String,
}

impl PullError {
    /// A failure of `failure` class.
    pub fn new(failure: PullFailure, message: impl Into<String>) -> Self {
        Self { failure, message: message.into() }
    }

    /// The same failure, its message prefixed with `source: `.
    pub fn at(self, source: &impl std::fmt::Display) -> Self {
        Self { failure: self.failure, message: format!("{source}: {}", self.message) }
    }
}

/// Classifies an error of the registry client.
pub(super) fn classify(e: &oci_client::errors::OciDistributionError) -> PullError {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let failure = match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => PullFailure::Unauthorized,
        E::ImageManifestNotFoundError(_) => PullFailure::NotFound,
        E::RegistryError { envelope, .. } => match envelope.errors.first().map(|x| &x.code) {
            Some(C::Unauthorized | C::Denied) => PullFailure::Unauthorized,
            Some(C::ManifestUnknown | C::NameUnknown | C::BlobUnknown | C::NotFound) => PullFailure::NotFound,
            Some(C::DigestInvalid) => PullFailure::DigestMismatch,
            _ => PullFailure::Unreachable,
        },
        E::ServerError { code: 401 | 403, .. } => PullFailure::Unauthorized,
        E::ServerError { code: 404, .. } => PullFailure::NotFound,
        E::DigestError(_) => PullFailure::DigestMismatch,
        E::UnsupportedMediaTypeError(_) | E::IncompatibleLayerMediaTypeError(_) | E::ManifestParsingError(_) => {
            PullFailure::MediaType
        }
        _ => PullFailure::Unreachable,
    };
    let mut message = e.to_string();
    // reqwest's error says "error sending request"; the cause says why.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message = format!("{message}: {c}");
        cause = c.source();
    }
    PullError::new(failure, message)
}
