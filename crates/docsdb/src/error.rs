//! The one error type of this crate.

use std::fmt;

/// What went wrong in the system-docs DB or in a registry file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or reached.
    #[error("cannot open the database at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The URL is not one we can use.
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://...")]
    BadUrl(String),
    /// A migration failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A registry file or value is wrong; the message names the file, line and field.
    #[error("{0}")]
    Input(#[from] InputError),
    /// A named thing does not exist.
    #[error("{kind} `{name}` does not exist")]
    NotFound { kind: &'static str, name: String },
    /// The change conflicts with what the DB holds.
    #[error("{0}")]
    Conflict(String),
    /// A stored value that cannot be read back (bad JSON, vector bytes of a wrong length).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error in input: a file (with line and field where known) or a value given on the
/// command line. Displays as `file:line: field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl InputError {
    /// An error with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        InputError {
            file: None,
            line: None,
            field: None,
            message: message.into(),
        }
    }

    /// Names the field (a path such as `handles[2].targets[0].endpoint`).
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Names the line (1-based).
    pub fn line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    /// Names the file, unless one is named already.
    pub fn in_file(mut self, file: &str) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_owned());
        }
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for InputError {}
