//! Translates kube-rs errors into the core's [`ApiError`] classes, by status code, reason and
//! the structured causes; never by message text.

use crate::sync::error::{ApiError, Cause};

/// Classifies a kube-rs error.
pub fn classify(e: kube::Error) -> ApiError {
    let kube::Error::Api(status) = e else {
        return ApiError::Transport(e.to_string());
    };
    let causes: Vec<Cause> = status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| Cause { reason: c.reason.clone(), field: c.field.clone(), message: c.message.clone() })
                .collect()
        })
        .unwrap_or_default();
    let message = status.message.clone();
    match status.code {
        404 => ApiError::NotFound,
        409 if status.reason == "AlreadyExists" => ApiError::AlreadyExists,
        409 => ApiError::Conflict { message, causes },
        422 => ApiError::Invalid { message, causes },
        429 | 500..=599 => ApiError::Unavailable {
            code: status.code,
            message,
            retry_after_seconds: status.details.as_ref().map(|d| d.retry_after_seconds).filter(|s| *s > 0),
        },
        code => ApiError::Other { code, reason: status.reason.clone(), message },
    }
}
