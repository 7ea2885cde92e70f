//! Errors of the threading service.

/// Why an event cannot be threaded. These are permanent: the worker sends
/// the event to the dead-letter topic with this message as the reason.
#[derive(Debug, thiserror::Error)]
pub enum ThreadingError {
    /// The event has no event id to deduplicate by.
    #[error("event has no event id")]
    MissingEventId,
    /// Neither a sender (inbound) nor a recipient (outbound) says who the
    /// customer is.
    #[error("event names no customer handle")]
    MissingCustomerHandle,
    /// A handle kind this build does not know (a newer producer).
    #[error("unknown handle kind {0}")]
    UnknownHandleKind(i32),
    /// An `EVENT_KIND_ATTACHMENT_STORED` event without its update.
    #[error("attachment-stored event carries no attachment_stored update")]
    MissingAttachmentUpdate,
    /// An attachment update of a message that was never threaded: it is
    /// dead-lettered (replay it once the message is threaded). An update
    /// follows its message on the same partition, so this means the
    /// message itself was refused or is lost.
    #[error("attachment update of message {0}, which was not threaded")]
    UnthreadedMessage(String),
    /// A handle that does not normalize.
    #[error("invalid {kind} handle")]
    InvalidHandle {
        /// Wire name of the handle's kind.
        kind: &'static str,
        /// Why it was rejected.
        #[source]
        source: omni_model::HandleError,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The event itself cannot be threaded (not retryable).
    #[error("cannot thread event {event_id}")]
    Threading {
        /// The event's id.
        event_id: String,
        /// Why.
        #[source]
        source: ThreadingError,
    },
    /// The helpdesk command is refused (not retryable).
    #[error("command {command_id} refused")]
    Command {
        /// The command's id.
        command_id: String,
        /// Why.
        #[source]
        source: crate::commands::CommandError,
    },
    /// The database failed; `op` says what the store was doing.
    #[error("database error while {op}")]
    Database {
        /// What the store was doing, e.g. `loading snapshot`.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the migrations failed.
    #[error("migrating the threading schema failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The transaction kept conflicting with concurrent workers.
    #[error("gave up after {attempts} conflicting attempts for event {event_id}")]
    Contention {
        /// The event's id.
        event_id: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// A stored timeline row does not decode (a damaged database).
    #[error("stored timeline row {id} does not decode")]
    Corrupt {
        /// The outbox row id.
        id: i64,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// The embedded store's in-memory timeline index named a row of
    /// another customer (a bug, or another process broke the file's
    /// invariants); the store reloads its state before the next call.
    #[error("timeline row {id} is not the customer's: index out of step")]
    TimelineIndex {
        /// The row id.
        id: i64,
    },
    /// The embedded store's writing task ended without a result (it
    /// panicked or the runtime is shutting down); nothing was committed.
    #[error("the embedded store's writing task failed")]
    Writer(#[source] tokio::task::JoinError),
    /// A journal entry of the embedded store does not decode (a damaged
    /// database, or one written by a newer version).
    #[error("state journal entry {id} does not decode")]
    Journal {
        /// The journal entry's id (0: one being written).
        id: i64,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A customer group of the embedded store does not encode or decode.
    #[error("customer group {survivor} does not encode or decode")]
    Group {
        /// The group's surviving customer id.
        survivor: String,
        /// The codec's error.
        #[source]
        source: GroupCodecError,
    },
    /// The customer group codec could not be set up (zstd could not
    /// allocate its context).
    #[error("setting up the customer group codec")]
    GroupCodec(#[source] GroupCodecError),
    /// The embedded store's file has no 16-byte seed for its group index
    /// (a damaged file): its index keys cannot be computed.
    #[error("the threading store's group index seed is missing or damaged")]
    KeySeed,
}

/// Why a customer group row does not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum GroupCodecError {
    /// Its JSON (damaged, or written by a newer version).
    #[error("its JSON does not decode")]
    Json(#[from] serde_json::Error),
    /// Its compression (a damaged row).
    #[error("its compressed form does not decode")]
    Compression(#[from] std::io::Error),
}

/// Adds what the store was doing to a driver error.
pub(crate) trait DbContext<T> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> DbContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { op, source })
    }
}
