//! Errors of the sync core: what the downstream API said, and why a sync failed.

/// One cause from the API's structured status (`status.details.causes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, such as `FieldValueInvalid`.
    pub reason: String,
    /// The field, in the API's dotted form (`spec.ports[0].nodePort`).
    pub field: String,
    /// Human-readable message.
    pub message: String,
}

/// A failure from the downstream API, classified by its status code and reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("not found")]
    NotFound,
    /// 409 on create: the name is taken.
    #[error("already exists")]
    AlreadyExists,
    /// 409 on update: the resourceVersion moved, or (server-side apply) field managers clash.
    #[error("conflict: {message}")]
    Conflict {
        /// The API's message.
        message: String,
        /// Fields named by the API, if any.
        causes: Vec<Cause>,
    },
    /// 422: the object failed validation.
    #[error("invalid: {message}")]
    Invalid {
        /// The API's message.
        message: String,
        /// The structured causes.
        causes: Vec<Cause>,
    },
    /// 429 or 5xx: try again later.
    #[error("unavailable ({code}): {message}")]
    Unavailable {
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
        /// Server-suggested delay in seconds.
        retry_after_seconds: Option<u32>,
    },
    /// Any other API status.
    #[error("api error {code} {reason}: {message}")]
    Other {
        /// HTTP status.
        code: u16,
        /// Status reason.
        reason: String,
        /// The API's message.
        message: String,
    },
    /// The request did not get an answer.
    #[error("transport: {0}")]
    Transport(String),
    /// The kind is not served by the downstream API.
    #[error("kind {0} is not served by the downstream API")]
    UnknownKind(String),
}

/// Why syncing an object failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The desired object is malformed.
    #[error("invalid desired object {object}: field {field}: {message}")]
    InvalidObject {
        /// `Kind namespace/name` (as far as known).
        object: String,
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The object cannot be written as it is, whatever the downstream does: a ConfigMap or
    /// Secret over the API's size limit
    /// ([`TooLarge`](super::preservation::Error::TooLarge), refused before any API call), or
    /// desired and live disagree on which object this is, or a preserve pattern is malformed.
    /// Retrying the same desired object cannot help, so callers park it until it changes.
    #[error(transparent)]
    Preservation(#[from] super::preservation::Error),
    /// A rule failed; nothing was written (fail-closed).
    #[error(transparent)]
    Rule(#[from] super::rules::RuleError),
    /// The object exists downstream but downsync does not own it.
    #[error("{object} exists and is not owned by this downsync (its downsync.dev/owner annotation: {owner})")]
    NotOwned {
        /// The object.
        object: String,
        /// Who owns it, as far as its annotation says.
        owner: String,
    },
    /// Conflicts persisted through every retry.
    #[error("{object}: unresolved conflict after {attempts} attempts on {paths:?}: {last}")]
    Conflict {
        /// The object.
        object: String,
        /// Attempts made.
        attempts: u32,
        /// Field paths involved.
        paths: Vec<String>,
        /// The last API message.
        last: String,
    },
    /// An immutable field changed and the rules said to skip.
    #[error("{object}: immutable fields {fields:?} changed upstream; skipped: {reason}")]
    Immutable {
        /// The object.
        object: String,
        /// The fields, as JSON pointers.
        fields: Vec<String>,
        /// Why it was skipped.
        reason: String,
    },
    /// A value the object asks for (a Service's `nodePort` or `clusterIP`) is held by another
    /// object downstream. Retried with backoff: the holder may let it go.
    #[error("{object}: {field} {value} is already allocated downstream to another object; retrying")]
    Allocated {
        /// The object.
        object: String,
        /// The field, as a JSON pointer.
        field: String,
        /// The value asked for.
        value: String,
    },
    /// Written again and again with no upstream change: another writer keeps changing it back.
    /// Not written for a while, with a growing pause, until the upstream object, its rules or
    /// the drift policy change.
    #[error(
        "{object}: written again and again with no upstream change, and changed back downstream each time: {fields}; writes paused with a growing backoff until the upstream object, its rules or the drift policy change"
    )]
    WriteLoop {
        /// The object.
        object: String,
        /// The fields that keep changing and who changes them.
        fields: String,
        /// How long until the next write may go.
        wait: std::time::Duration,
    },
    /// Server-side apply: other field managers own fields downsync applies with other values.
    /// The rest of the object was written; these fields are retried with backoff.
    #[error(
        "{object}: server-side apply conflicts with other field managers on {fields}; the other fields were written, these are retried (set strategy.force, or a drift policy that keeps these managers' fields)"
    )]
    FieldConflict {
        /// The object.
        object: String,
        /// The fields in conflict and their managers.
        fields: String,
    },
    /// A recreate deleted the object but it did not go away in time.
    #[error("{object}: still present {waited_ms} ms after delete during recreate")]
    RecreateTimeout {
        /// The object.
        object: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The downstream API failed.
    #[error("{object}: {operation} failed: {source}")]
    Api {
        /// The object.
        object: String,
        /// What was being done (get, create, update, delete).
        operation: &'static str,
        /// The API error.
        #[source]
        source: ApiError,
    },
}

/// Result of the core's operations.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;
