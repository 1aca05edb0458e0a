//! Errors of the message layer: decoding, validation and routing.

/// Why an envelope was refused. Every variant names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("message is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a JSON envelope: {0}")]
    Syntax(String),
    #[error("{field}: {problem}")]
    Field { field: String, problem: String },
    #[error("no agent {target}")]
    NoRoute { target: String },
}

impl MessageError {
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        MessageError::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
