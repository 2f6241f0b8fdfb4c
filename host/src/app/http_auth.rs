//! Who may read the operations endpoints: the caller's bearer token is reviewed by the downstream
//! cluster (TokenReview) and the path authorised for that user (SubjectAccessReview, a
//! non-resource URL `get`), as controller-runtime's `WithAuthenticationAndAuthorization` does;
//! decisions are cached briefly, so a scrape every 15 s costs two reviews at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

/// How long a decision is reused: a Prometheus scrape every 15 s reviews at most once a scrape,
/// and a revoked grant or token stops working within this long.
pub const DECISION_TTL: Duration = Duration::from_secs(10);

/// The most decisions kept; past it the expired ones go, and if none has expired, all.
pub const MOST_DECISIONS: usize = 1024;

/// Why a review could not be made (not a refusal: the cluster did not answer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TokenReview failed.
    #[error("token review: {0}")]
    TokenReview(#[source] kube::Error),
    /// The SubjectAccessReview failed.
    #[error("subject access review: {0}")]
    AccessReview(#[source] kube::Error),
}

/// What the cluster said about one token and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The token is valid and its user may `get` the path.
    Allowed,
    /// The token is valid but its user may not `get` the path.
    Forbidden,
    /// The token is not valid.
    Unauthenticated,
}

/// Recent decisions by the digest of token and path (the token itself is never kept).
#[derive(Debug)]
pub struct DecisionCache {
    ttl: Duration,
    most: usize,
    entries: HashMap<[u8; 32], (Instant, Decision)>,
}

impl DecisionCache {
    /// An empty cache keeping decisions for `ttl`, at most `most` of them.
    pub fn new(ttl: Duration, most: usize) -> Self {
        Self { ttl, most, entries: HashMap::new() }
    }

    /// The key of `token` asking for `path`.
    pub fn key(token: &str, path: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(token.as_bytes());
        h.update([0]);
        h.update(path.as_bytes());
        h.finalize().into()
    }

    /// The decision made for `key` less than the TTL before `now`.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        self.entries.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl).map(|(_, d)| *d)
    }

    /// Keeps `decision` for `key`, made at `now`.
    pub fn put(&mut self, key: [u8; 32], decision: Decision, now: Instant) {
        if self.entries.len() >= self.most {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.most {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (now, decision));
    }

    /// How many decisions are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The bearer token of an `Authorization: Bearer TOKEN` header, if there is exactly one such
/// well-formed header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (value, None) = (values.next()?, values.next()) else { return None };
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(char::is_whitespace))
        .then_some(token)
}

/// Reviews callers through the downstream cluster.
pub struct Authorizer {
    client: kube::Client,
    cache: Mutex<DecisionCache>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Reviews through `client` (the downstream cluster's), caching for [`DECISION_TTL`].
    pub fn new(client: kube::Client) -> Self {
        Self { client, cache: Mutex::new(DecisionCache::new(DECISION_TTL, MOST_DECISIONS)) }
    }

    /// Whether `token` may `get` `path`, from the cache or the cluster.
    pub async fn decide(&self, token: &str, path: &str) -> Result<Decision, Error> {
        let key = DecisionCache::key(token, path);
        if let Some(d) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key, Instant::now()) {
            return Ok(d);
        }
        let decision = self.review(token, path).await?;
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).put(key, decision, Instant::now());
        Ok(decision)
    }

    async fn review(&self, token: &str, path: &str) -> Result<Decision, Error> {
        let review =
            TokenReview { spec: TokenReviewSpec { token: token.to_string(), audiences: None }, ..Default::default() };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::TokenReview)?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(Decision::Unauthenticated),
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(Error::AccessReview)?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        if !allowed {
            tracing::debug!(user = user.username.as_deref().unwrap_or("?"), path, "refused: no grant for the path");
        }
        Ok(if allowed { Decision::Allowed } else { Decision::Forbidden })
    }
}

/// The axum middleware: 401 without a valid bearer token, 403 without the grant, 500 when the
/// cluster cannot be asked; else the endpoint's answer.
pub async fn require_grant(State(auth): State<Arc<Authorizer>>, request: Request, next: Next) -> Response {
    let Some(token) = bearer_token(request.headers()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized: send a Kubernetes bearer token (Authorization: Bearer TOKEN)\n",
        )
            .into_response();
    };
    let path = request.uri().path().to_string();
    match auth.decide(token, &path).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Forbidden) => {
            (StatusCode::FORBIDDEN, format!("Forbidden: the token's user may not get the non-resource URL {path}\n"))
                .into_response()
        }
        Ok(Decision::Unauthenticated) => {
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "Unauthorized: the token is not valid\n")
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, path, "cannot review a caller of the operations endpoints");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot review the caller: the downstream cluster did not answer\n")
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).expect("a header value"));
        }
        h
    }

    #[test]
    fn a_bearer_token_is_read_only_from_one_well_formed_header() {
        assert_eq!(bearer_token(&headers(&["Bearer abc.def"])), Some("abc.def"));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Some("abc"));
        assert_eq!(bearer_token(&headers(&[])), None);
        assert_eq!(bearer_token(&headers(&["Bearer "])), None);
        assert_eq!(bearer_token(&headers(&["Basic dXNlcjpwYXNz"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer b"])), None);
    }

    #[test]
    fn a_decision_is_reused_within_the_ttl_and_not_after() {
        let mut c = DecisionCache::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let k = DecisionCache::key("token", "/metrics");
        c.put(k, Decision::Allowed, t0);
        assert_eq!(c.get(&k, t0 + Duration::from_secs(9)), Some(Decision::Allowed));
        assert_eq!(c.get(&k, t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn a_decision_is_per_token_and_path() {
        let mut c = DecisionCache::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        c.put(DecisionCache::key("a", "/metrics"), Decision::Allowed, t0);
        assert_eq!(c.get(&DecisionCache::key("a", "/explain"), t0), None);
        assert_eq!(c.get(&DecisionCache::key("b", "/metrics"), t0), None);
        // The separator keeps ("a/", "x") and ("a", "/x") apart.
        assert_ne!(DecisionCache::key("a/", "x"), DecisionCache::key("a", "/x"));
    }

    #[test]
    fn a_full_cache_drops_the_expired_first_then_everything() {
        let mut c = DecisionCache::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        c.put(DecisionCache::key("a", "/"), Decision::Allowed, t0);
        c.put(DecisionCache::key("b", "/"), Decision::Forbidden, t0 + Duration::from_secs(5));
        // Full: "a" has expired at t0+11 and goes; "b" stays.
        c.put(DecisionCache::key("c", "/"), Decision::Allowed, t0 + Duration::from_secs(11));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&DecisionCache::key("b", "/"), t0 + Duration::from_secs(11)), Some(Decision::Forbidden));
        // Full with nothing expired: all go, the new one stays.
        c.put(DecisionCache::key("d", "/"), Decision::Allowed, t0 + Duration::from_secs(12));
        assert_eq!(c.len(), 1);
    }
}
