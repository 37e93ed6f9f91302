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
    /// An internal invariant failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// No dead letter with this sequence (requeued or discarded already?).
    #[error("no dead letter with sequence {0}")]
    DeadLetterNotFound(u64),
}

impl ServiceError {
    /// The stable code sent to the caller.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Batch(problem) => problem.code.as_str(),
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
            ServiceError::Internal(_) => "INTERNAL",
            ServiceError::DeadLetterNotFound(_) => "DEAD_LETTER_NOT_FOUND",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            ServiceError::Batch(_) | ServiceError::InvalidRequest { .. } => Code::InvalidArgument,
            ServiceError::Store(e) if e.is_retryable() => Code::Unavailable,
            ServiceError::Store(_) | ServiceError::Internal(_) => Code::Internal,
            ServiceError::NoPeerCertificate
            | ServiceError::UnknownCertificate { .. }
            | ServiceError::InactiveCertificate { .. } => Code::Unauthenticated,
            ServiceError::WrongRole { .. }
            | ServiceError::SupplierSuspended(_)
            | ServiceError::UnknownSupplier(_) => Code::PermissionDenied,
            ServiceError::DeadLetterNotFound(_) => Code::NotFound,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let code = error.code();
        let grpc = error.grpc_code();
        if grpc == Code::Internal || grpc == Code::Unavailable {
            tracing::error!(error = %error, code, "request failed");
        } else {
            tracing::debug!(error = %error, code, "request refused");
        }
        let mut status = Status::new(grpc, format!("{code}: {error}"));
        if let Ok(value) = code.parse() {
            status.metadata_mut().insert(ERROR_CODE_KEY, value);
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
