//! The crate's errors: [`HttpError`] for malformed or oversized HTTP (the
//! server answers it with 400 and its one-line text) and [`Error`] for
//! everything a client call can meet.

use std::path::PathBuf;
use std::time::Duration;

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What is wrong with the bytes a peer sent as an HTTP/1.1 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head (request line and headers) did not end within the limit.
    #[error("HTTP head longer than {max} bytes")]
    HeadTooLarge {
        /// The limit.
        max: usize,
    },
    /// More header lines than the limit.
    #[error("more than {max} HTTP headers")]
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// A Content-Length over the body limit.
    #[error("body of {length} bytes is over the limit of {max}")]
    BodyTooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        max: usize,
    },
    /// The head is not UTF-8 text.
    #[error("HTTP head is not UTF-8 text")]
    HeadNotText,
    /// The request or status line is not `METHOD TARGET HTTP/1.x`.
    #[error("malformed start line '{line}'")]
    MalformedStartLine {
        /// The line (shortened, control characters escaped).
        line: String,
    },
    /// A header line is not `Name: value`.
    #[error("malformed header line '{line}'")]
    MalformedHeader {
        /// The line (shortened, control characters escaped).
        line: String,
    },
    /// A method other than GET and PUT.
    #[error("unsupported method '{method}'")]
    UnsupportedMethod {
        /// The method (shortened).
        method: String,
    },
    /// A version other than HTTP/1.0 and HTTP/1.1.
    #[error("unsupported HTTP version '{version}'")]
    UnsupportedVersion {
        /// The version (shortened).
        version: String,
    },
    /// The request target is not an absolute path.
    #[error("request target '{target}' is not an absolute path")]
    BadTarget {
        /// The target (shortened).
        target: String,
    },
    /// Content-Length is not a number or appears twice with different values.
    #[error("invalid Content-Length '{value}'")]
    BadContentLength {
        /// The value (shortened).
        value: String,
    },
    /// Transfer-Encoding (chunked bodies) is not supported.
    #[error("Transfer-Encoding '{value}' is not supported; send Content-Length")]
    TransferEncodingUnsupported {
        /// The value (shortened).
        value: String,
    },
    /// The status code of a response is not three digits.
    #[error("invalid status code '{code}'")]
    BadStatus {
        /// The code (shortened).
        code: String,
    },
    /// The whole message did not arrive within the deadline.
    #[error("message not complete within {ms} ms")]
    Timeout {
        /// The deadline in milliseconds.
        ms: u128,
    },
    /// The peer closed the connection before the message was complete.
    #[error("connection closed after {received} bytes of an incomplete message")]
    Truncated {
        /// Bytes received.
        received: usize,
    },
    /// Reading the socket failed.
    #[error("read failed: {reason}")]
    Read {
        /// The OS error's text.
        reason: String,
    },
}

/// Errors of [`crate::Client`] calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server did not accept the connection in time.
    #[error("no answer from {} within {} ms", path.display(), timeout.as_millis())]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The socket path does not fit in `sockaddr_un`.
    #[error("socket path {} is too long ({length} bytes, at most {max})", path.display())]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// Sending the request failed (or timed out).
    #[error("cannot send the request to {}: {source}", path.display())]
    Send {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The response was malformed, oversized, late or cut short.
    #[error("bad response from {}: {source}", path.display())]
    Response {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        source: HttpError,
    },
    /// The server answered with an error status.
    #[error("{endpoint}: HTTP {status}: {message}")]
    Status {
        /// The endpoint path asked.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The server's error messages, joined with ": ".
        message: String,
    },
    /// A request or response body is not the JSON expected.
    #[error("{what}: {source}")]
    Json {
        /// What was being encoded or decoded.
        what: String,
        /// serde_json's error.
        source: serde_json::Error,
    },
}

impl Error {
    /// The HTTP status the server answered with, if this is a status error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Shortens `text` to at most 80 characters with control characters
/// escaped, so that an error about hostile input stays one short line.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 80;
    let mut out = String::new();
    for (count, ch) in text.chars().enumerate() {
        if count == MAX_CHARS {
            out.push_str("...");
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}
