//! The domain's one error type. Every lifecycle operation answers with it;
//! `cri/` maps it to a gRPC status in one place, and logs keep the source
//! chain.

/// What went wrong, in terms a client can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An object with that name or key exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A field of the request is wrong: which one and why.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as the request names it (`config.metadata.name`).
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// The object is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bounded wait ran out.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A pool ran dry (addresses, ports).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A service berth depends on is not there (yet), or did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// Stored or fetched data is corrupt.
    #[error("{0}")]
    DataLoss(String),
    /// berth's own failure, with what it was doing and why.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
}

/// Results of the domain.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A wrong field.
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::InvalidArgument { field: field.into(), reason: reason.to_string() }
    }

    /// An internal failure while doing `context`.
    pub fn internal(context: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Internal { context: context.into(), source: std::sync::Arc::from(source.into()) }
    }

    /// A closure for `map_err`: an internal failure while doing `context`.
    pub fn internal_fn<E: Into<Box<dyn std::error::Error + Send + Sync>>>(context: impl Into<String>) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |e| Error::internal(context, e)
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Error {
        Error::internal("store", e)
    }
}

impl From<crate::image::ImageError> for Error {
    fn from(e: crate::image::ImageError) -> Error {
        use crate::image::ImageError as I;
        match e {
            I::InvalidReference { .. } | I::Ambiguous(_) => Error::invalid("image", e),
            I::Registry { .. } => Error::Unavailable(e.to_string()),
            I::Stalled { .. } => Error::DeadlineExceeded(e.to_string()),
            I::BadImage { .. } | I::Unpack { .. } => Error::FailedPrecondition(e.to_string()),
            I::Content { .. } => Error::DataLoss(e.to_string()),
            I::Db(_) | I::Io { .. } => Error::internal("images", e),
        }
    }
}

/// An error of validated limits ("cpu_quota: reason") as a field of `prefix`.
pub fn limits_error(prefix: &str, e: &str) -> Error {
    match e.split_once(": ") {
        Some((field, reason)) => Error::invalid(format!("{prefix}.{field}"), reason),
        None => Error::invalid(prefix, e),
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::internal("task", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_keep_the_source() {
        assert_eq!(Error::invalid("config.hostname", "too long").to_string(), "config.hostname: too long");
        let e = Error::internal("pod cgroup", std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(e.to_string().starts_with("pod cgroup: "));
        assert!(std::error::Error::source(&e).is_some());
        assert!(Error::NotFound("x".into()).is_not_found());
    }
}
