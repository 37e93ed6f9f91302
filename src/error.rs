//! The gRPC error boundary: [`ServiceError`] is what the services fail with, and
//! `impl From<ServiceError> for tonic::Status` is the one place where a domain
//! error becomes a status code.
//!
//! The codes tell the caller what to do: INVALID_ARGUMENT "your input is wrong,
//! fix it", UNAVAILABLE "try again" (disk full, store busy), INTERNAL "our fault",
//! UNAUTHENTICATED / PERMISSION_DENIED "this certificate may not do this".
//! Every status carries a stable code in the `schakel-error-code` metadata entry
//! and at the start of its message. Messages never contain record content.

use tonic::{Code, Status};

use crate::schema::BatchProblem;
use crate::store::{Role, StoreError};

/// The metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_KEY: &str = "schakel-error-code";

/// The metadata key of gRPC's retry hint on RESOURCE_EXHAUSTED, in milliseconds.
pub const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The batch as a whole is unacceptable (header, record count, size).
    #[error("{0}")]
    Batch(#[from] BatchProblem),
    /// The store failed; see [`StoreError::is_retryable`].
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The connection carries no verified client certificate.
    #[error("no verified client certificate on this connection")]
    NoPeerCertificate,
    /// The certificate chains to our CA but is not registered.
    #[error("client certificate {fingerprint} is not registered")]
    UnknownCertificate {
        /// SHA-256 of the certificate.
        fingerprint: String,
    },
    /// The certificate was registered but is revoked, retired or expired.
    #[error("client certificate {fingerprint} is {state}")]
    InactiveCertificate {
        /// SHA-256 of the certificate.
        fingerprint: String,
        /// "revoked", "retired", "expired".
        state: &'static str,
    },
    /// The certificate's role may not call this service.
    #[error("role {actual:?} may not call this service (needs {needed:?})")]
    WrongRole {
        /// The role the service needs.
        needed: Role,
        /// The caller's role.
        actual: Role,
    },
    /// The supplier is suspended by an admin.
    #[error("supplier {0} is suspended")]
    SupplierSuspended(String),
    /// A supplier certificate names a supplier that does not exist.
    #[error("supplier {0} is not registered")]
    UnknownSupplier(String),
    /// A request field is out of range.
    #[error("{field}: {message}")]
    InvalidRequest {
        /// The offending field.
        field: &'static str,
        /// What is wrong (never the value itself).
        message: String,
    },
    /// A limit was hit; the caller should retry after the hint.
    #[error("too many {what}; retry after {} ms", retry_after.as_millis())]
    Overloaded {
        /// Which limit.
        what: &'static str,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// The gateway is receiving and decoding as many request bytes as
    /// `limits.max_decoding_bytes` allows, across all connections.
    #[error("the gateway is receiving too many request bytes at once; retry after {} ms", retry_after.as_millis())]
    DecodeBudgetExhausted {
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// The request is not a valid protobuf message of its type.
    #[error("the request does not decode: {0}")]
    Malformed(String),
    /// An internal invariant failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The named thing does not exist (admin calls).
    #[error("{message}")]
    NotFound {
        /// Stable code, e.g. "SUPPLIER_NOT_FOUND".
        code: &'static str,
        /// What was looked for (ids only).
        message: String,
    },
    /// The thing to create exists already (admin calls).
    #[error("{message}")]
    AlreadyExists {
        /// Stable code, e.g. "SUPPLIER_EXISTS".
        code: &'static str,
        /// What exists (ids only).
        message: String,
    },
    /// The request is well-formed but refused in the current state, e.g.
    /// revoking the last working admin certificate ("LAST_ADMIN").
    #[error("{message}")]
    FailedPrecondition {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// An input that is refused with a specific code (a certificate from
    /// another CA: "CERTIFICATE_UNTRUSTED").
    #[error("{message}")]
    Rejected {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// No dead letter with this sequence (requeued or discarded already?).
    #[error("no dead letter with sequence {0}")]
    DeadLetterNotFound(u64),
    /// An unregistered certificate of a UZI server CA that the `ura` identity
    /// policy does not admit.
    #[error("{0}")]
    Uzi(#[from] crate::uzi::policy::UraRefusal),
}

impl ServiceError {
    /// The stable code sent to the caller.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Batch(problem) => problem.code.as_str(),
            ServiceError::Store(StoreError::Failed(_)) => "STORE_FAILED",
            ServiceError::Store(e) if e.is_retryable() => "STORE_UNAVAILABLE",
            ServiceError::Store(_) => "STORE_FAILURE",
            ServiceError::NoPeerCertificate => "NO_CLIENT_CERTIFICATE",
            ServiceError::UnknownCertificate { .. } => "CERTIFICATE_NOT_REGISTERED",
            ServiceError::InactiveCertificate { state, .. } => match *state {
                "revoked" => "CERTIFICATE_REVOKED",
                "retired" => "CERTIFICATE_RETIRED",
                _ => "CERTIFICATE_EXPIRED",
            },
            ServiceError::WrongRole { .. } => "WRONG_ROLE",
            ServiceError::SupplierSuspended(_) => "SUPPLIER_SUSPENDED",
            ServiceError::UnknownSupplier(_) => "SUPPLIER_NOT_REGISTERED",
            ServiceError::InvalidRequest { .. } => "INVALID_REQUEST",
            ServiceError::Malformed(_) => "MALFORMED_MESSAGE",
            ServiceError::Overloaded { .. } => "RATE_LIMITED",
            ServiceError::DecodeBudgetExhausted { .. } => "DECODE_BUDGET_EXHAUSTED",
            ServiceError::Internal(_) => "INTERNAL",
            ServiceError::NotFound { code, .. }
            | ServiceError::AlreadyExists { code, .. }
            | ServiceError::FailedPrecondition { code, .. }
            | ServiceError::Rejected { code, .. } => code,
            ServiceError::DeadLetterNotFound(_) => "DEAD_LETTER_NOT_FOUND",
            ServiceError::Uzi(refusal) => refusal.code(),
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            ServiceError::Batch(_)
            | ServiceError::InvalidRequest { .. }
            | ServiceError::Malformed(_) => Code::InvalidArgument,
            ServiceError::Store(e) if e.is_retryable() => Code::Unavailable,
            ServiceError::Overloaded { .. } | ServiceError::DecodeBudgetExhausted { .. } => {
                Code::ResourceExhausted
            }
            ServiceError::Store(_) | ServiceError::Internal(_) => Code::Internal,
            ServiceError::NoPeerCertificate
            | ServiceError::UnknownCertificate { .. }
            | ServiceError::InactiveCertificate { .. } => Code::Unauthenticated,
            ServiceError::WrongRole { .. }
            | ServiceError::SupplierSuspended(_)
            | ServiceError::UnknownSupplier(_) => Code::PermissionDenied,
            ServiceError::NotFound { .. } => Code::NotFound,
            ServiceError::AlreadyExists { .. } => Code::AlreadyExists,
            ServiceError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ServiceError::Rejected { .. } => Code::InvalidArgument,
            ServiceError::DeadLetterNotFound(_) => Code::NotFound,
            // A person's card is a known party that may not act as a system;
            // the rest do not identify a registered caller.
            ServiceError::Uzi(crate::uzi::policy::UraRefusal::NotServerCard(_)) => {
                Code::PermissionDenied
            }
            ServiceError::Uzi(_) => Code::Unauthenticated,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let code = error.code();
        let grpc = error.grpc_code();
        let retry_after = match &error {
            ServiceError::Overloaded { retry_after, .. }
            | ServiceError::DecodeBudgetExhausted { retry_after } => Some(retry_after.as_millis()),
            _ => None,
        };
        if code == "STORE_FAILED" {
            // The store logged why, once, when it failed; one line per refused
            // call would bury that line.
            tracing::debug!(error = %error, code, "request refused: the store has failed");
        } else if grpc == Code::Internal || grpc == Code::Unavailable {
            tracing::error!(error = %error, code, "request failed");
        } else {
            tracing::debug!(error = %error, code, "request refused");
        }
        let mut status = Status::new(grpc, format!("{code}: {error}"));
        if let Ok(value) = code.parse() {
            status.metadata_mut().insert(ERROR_CODE_KEY, value);
        }
        if let Some(ms) = retry_after.and_then(|ms| ms.to_string().parse().ok()) {
            // gRPC's standard retry pushback hint, in milliseconds.
            status.metadata_mut().insert(RETRY_PUSHBACK_KEY, ms);
        }
        status
    }
}

/// The stable code of a failed call, from its metadata.
pub fn error_code(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_store_is_unavailable_store_failed_and_documented() {
        let failure = std::sync::Arc::new(crate::store::StoreFailure {
            at: std::time::SystemTime::now(),
            context: "syncing the store to disk (group commit)".into(),
            error: "Input/output error (os error 5)".into(),
        });
        let status = Status::from(ServiceError::Store(StoreError::Failed(failure)));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(error_code(&status), Some("STORE_FAILED"));
        assert!(status.message().starts_with("STORE_FAILED: "), "{status:?}");
        let doc = include_str!("../docs/error-codes.md");
        for code in ["STORE_FAILED", "STORE_UNAVAILABLE", "STORE_FAILURE"] {
            assert!(
                doc.contains(&format!("`{code}`")),
                "{code} missing from the docs"
            );
        }
    }
}
