//! What the user asked for upstream: which fields of the desired object a client set, and
//! which the upstream server filled in (defaulted or allocated).

/// The intent behind a desired object, as the host derived it from the upstream object's
/// `managedFields`.
///
/// ```ignore
/// // kubectl created a NodePort Service asking for nodePort 30080 on port 0 only:
/// assert!(intent.requested("/spec/ports/0/nodePort"));
/// assert!(!intent.requested("/spec/ports/1/nodePort")); // allocated upstream
/// assert!(!intent.requested("/spec/clusterIP"));        // allocated upstream
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    known: bool,
    server_set: Vec<String>,
}

impl Intent {
    /// Nobody can tell (the upstream object has no `managedFields`).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// Known: `paths` are the pointers of the fields no client asked for (each a subtree).
    pub fn server_set(paths: Vec<String>) -> Self {
        Self { known: true, server_set: paths }
    }

    /// Whether the host could tell requested fields from server-set ones. When it could not,
    /// [`Intent::requested`] is false everywhere: keep the behaviour you had without intent.
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// Whether a client asked for the field at `pointer`, which the desired object holds.
    /// False when the upstream server filled it in, and false when the intent is unknown.
    pub fn requested(&self, pointer: &str) -> bool {
        self.known && !self.is_server_set(pointer)
    }

    /// Whether the field at `pointer` was filled in by the upstream server (it or one of its
    /// ancestors is listed). False when the intent is unknown.
    pub fn is_server_set(&self, pointer: &str) -> bool {
        self.server_set
            .iter()
            .any(|p| pointer.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    }

    /// The server-set pointers, as the host sent them.
    pub fn server_set_paths(&self) -> &[String] {
        &self.server_set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_means_known_and_not_under_a_server_set_path() {
        let intent = Intent::server_set(vec!["/spec/clusterIPs".into(), "/spec/ports/1/nodePort".into()]);
        assert!(intent.requested("/spec/ports/0/nodePort"));
        assert!(!intent.requested("/spec/ports/1/nodePort"));
        assert!(!intent.requested("/spec/clusterIPs/0"));
        assert!(intent.requested("/spec/clusterIP"), "a prefix of a name is not an ancestor");
        assert!(!Intent::unknown().requested("/spec/ports/0/nodePort"));
        assert!(!Intent::unknown().is_server_set("/spec/clusterIP"));
    }
}
