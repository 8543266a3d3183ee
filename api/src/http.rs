//! Bounded HTTP/1.1 framing: one request per connection, bodies by
//! Content-Length only.
//!
//! [`parse_request`] is a pure function over the bytes received so far
//! (what the fuzz target drives); [`read_request`] reads a socket into it
//! under a deadline. Every limit is applied before the bytes it guards are
//! kept: the head may not pass [`Limits::max_head`] bytes nor
//! [`Limits::max_headers`] lines, and the body may not pass
//! [`Limits::max_body`].

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::error::{excerpt, HttpError};

/// The bounds on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line plus headers, with the blank line.
    pub max_head: usize,
    /// Most header lines.
    pub max_headers: usize,
    /// Longest body.
    pub max_body: usize,
    /// Longest time to receive the whole message.
    pub deadline: Duration,
}

impl Default for Limits {
    /// 8 KiB of head, 64 headers, 256 KiB of body, 5 seconds.
    fn default() -> Self {
        Limits {
            max_head: 8 << 10,
            max_headers: 64,
            max_body: 256 << 10,
            deadline: Duration::from_secs(5),
        }
    }
}

/// The request methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET: read something.
    Get,
    /// PUT: act or create.
    Put,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The target's path, without any query string.
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
    /// Whether the client sent `Expect: 100-continue`.
    pub expects_continue: bool,
}

/// A response: a status and, for 200 and errors, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body, sent with `Content-Type: application/json`.
    pub body: Option<Vec<u8>>,
}

/// What parsing the bytes received so far found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole message; `consumed` bytes of the input belong to it.
    Complete {
        /// The message.
        message: T,
        /// Its length in the input.
        consumed: usize,
    },
    /// More bytes are needed (and allowed by the limits).
    Incomplete {
        /// Whether the head is complete and asks for `100 Continue`.
        expects_continue: bool,
    },
}

/// The parts of a head common to requests and responses.
struct Head {
    start_line: String,
    content_length: usize,
    expects_continue: bool,
    head_len: usize,
}

/// Finds the end of the head (`\r\n\r\n`) and checks the header lines.
fn parse_head(input: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    let search = &input[..input.len().min(limits.max_head)];
    let Some(end) = search.windows(4).position(|w| w == b"\r\n\r\n") else {
        if input.len() >= limits.max_head {
            return Err(HttpError::HeadTooLarge {
                max: limits.max_head,
            });
        }
        return Ok(None);
    };
    let head_len = end + 4;
    let text = std::str::from_utf8(&input[..end]).map_err(|_| HttpError::HeadNotText)?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_string();
    let mut content_length: Option<u64> = None;
    let mut expects_continue = false;
    for (count, line) in lines.enumerate() {
        if count >= limits.max_headers {
            return Err(HttpError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(name, _)| is_token(name))
            .ok_or_else(|| HttpError::MalformedHeader {
                line: excerpt(line),
            })?;
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<u64>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .filter(|length| content_length.is_none_or(|seen| seen == *length))
                .ok_or_else(|| HttpError::BadContentLength {
                    value: excerpt(value),
                })?;
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncodingUnsupported {
                value: excerpt(value),
            });
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expects_continue = true;
        }
    }
    let length = content_length.unwrap_or(0);
    if length > limits.max_body as u64 {
        return Err(HttpError::BodyTooLarge {
            length,
            max: limits.max_body,
        });
    }
    Ok(Some(Head {
        start_line,
        content_length: length as usize,
        expects_continue,
        head_len,
    }))
}

/// Whether `name` is an HTTP token (a header name).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request from the bytes received so far.
pub fn parse_request(input: &[u8], limits: &Limits) -> Result<Parsed<Request>, HttpError> {
    let Some(head) = parse_head(input, limits)? else {
        return Ok(Parsed::Incomplete {
            expects_continue: false,
        });
    };
    let mut parts = head.start_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::MalformedStartLine {
            line: excerpt(&head.start_line),
        });
    };
    let method = match method {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        other if is_token(other) => {
            return Err(HttpError::UnsupportedMethod {
                method: excerpt(other),
            })
        }
        _ => {
            return Err(HttpError::MalformedStartLine {
                line: excerpt(&head.start_line),
            })
        }
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::UnsupportedVersion {
            version: excerpt(version),
        });
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(HttpError::BadTarget {
            target: excerpt(target),
        });
    }
    let total = head.head_len + head.content_length;
    if input.len() < total {
        return Ok(Parsed::Incomplete {
            expects_continue: head.expects_continue,
        });
    }
    Ok(Parsed::Complete {
        message: Request {
            method,
            path: path.to_string(),
            body: input[head.head_len..total].to_vec(),
            expects_continue: head.expects_continue,
        },
        consumed: total,
    })
}

/// Parses a response from the bytes received so far. A response without
/// Content-Length has no body (the server always sends one with a body).
pub fn parse_response(input: &[u8], limits: &Limits) -> Result<Parsed<Response>, HttpError> {
    let Some(head) = parse_head(input, limits)? else {
        return Ok(Parsed::Incomplete {
            expects_continue: false,
        });
    };
    let mut parts = head.start_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::MalformedStartLine {
            line: excerpt(&head.start_line),
        });
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::UnsupportedVersion {
            version: excerpt(version),
        });
    }
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| code.len() == 3 && (100..600).contains(s))
        .ok_or_else(|| HttpError::BadStatus {
            code: excerpt(code),
        })?;
    if status == 100 {
        // An interim `100 Continue`: skip it; the real response follows.
        return match parse_response(&input[head.head_len..], limits)? {
            Parsed::Complete { message, consumed } => Ok(Parsed::Complete {
                message,
                consumed: consumed + head.head_len,
            }),
            incomplete => Ok(incomplete),
        };
    }
    let total = head.head_len + head.content_length;
    if input.len() < total {
        return Ok(Parsed::Incomplete {
            expects_continue: false,
        });
    }
    let body = (head.content_length > 0).then(|| input[head.head_len..total].to_vec());
    Ok(Parsed::Complete {
        message: Response { status, body },
        consumed: total,
    })
}

/// A stream whose read timeout can be set (Unix sockets; tests use others).
pub trait TimedRead: Read {
    /// Sets the longest a single read may block.
    fn set_read_deadline(&mut self, timeout: Duration) -> std::io::Result<()>;
}

impl TimedRead for std::os::unix::net::UnixStream {
    fn set_read_deadline(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }
}

/// Reads one message with `parse` from `stream` within `limits.deadline`.
/// `on_continue` is called once if the head asks for `100 Continue`.
fn read_message<S: TimedRead, T>(
    stream: &mut S,
    limits: &Limits,
    parse: fn(&[u8], &Limits) -> Result<Parsed<T>, HttpError>,
    mut on_continue: impl FnMut(&mut S),
) -> Result<T, HttpError> {
    let start = Instant::now();
    let cap = limits.max_head + limits.max_body;
    let mut buffer = Vec::with_capacity(1024.min(cap));
    let mut chunk = [0u8; 4096];
    let mut continued = false;
    loop {
        match parse(&buffer, limits)? {
            Parsed::Complete { message, .. } => return Ok(message),
            Parsed::Incomplete { expects_continue } => {
                if expects_continue && !continued {
                    continued = true;
                    on_continue(stream);
                }
            }
        }
        let left = limits
            .deadline
            .checked_sub(start.elapsed())
            .filter(|left| !left.is_zero())
            .ok_or(HttpError::Timeout {
                ms: limits.deadline.as_millis(),
            })?;
        stream
            .set_read_deadline(left)
            .map_err(|e| HttpError::Read {
                reason: e.to_string(),
            })?;
        let room = cap.saturating_sub(buffer.len()).min(chunk.len());
        if room == 0 {
            // The limits make this unreachable: parse errs first.
            return Err(HttpError::HeadTooLarge {
                max: limits.max_head,
            });
        }
        match stream.read(&mut chunk[..room]) {
            Ok(0) => {
                return Err(HttpError::Truncated {
                    received: buffer.len(),
                })
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                return Err(HttpError::Read {
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Reads one request from `stream` within the limits, answering
/// `Expect: 100-continue` with `100 Continue`.
pub fn read_request<S: TimedRead + Write>(
    stream: &mut S,
    limits: &Limits,
) -> Result<Request, HttpError> {
    read_message(stream, limits, parse_request, |s| {
        // A client that waits for it gets it; one that does not ignores it.
        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    })
}

/// Reads one response from `stream` within the limits.
pub fn read_response<S: TimedRead>(stream: &mut S, limits: &Limits) -> Result<Response, HttpError> {
    read_message(stream, limits, parse_response, |_| {})
}

/// The reason phrase of the status codes the API uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl Response {
    /// A response with no body (204).
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
        }
    }

    /// A 200 response with `body` as its JSON.
    pub fn ok_json(body: Vec<u8>) -> Self {
        Response {
            status: 200,
            body: Some(body),
        }
    }

    /// An error response as Cloud Hypervisor sends it: a JSON array of
    /// messages, outermost first.
    pub fn error(status: u16, messages: &[String]) -> Self {
        let body = serde_json::to_vec(messages).expect("a list of strings always serializes");
        Response {
            status,
            body: Some(body),
        }
    }

    /// The messages of an error body (a JSON array of strings, or any
    /// other text as one message).
    pub fn error_messages(&self) -> Vec<String> {
        let Some(body) = &self.body else {
            return Vec::new();
        };
        serde_json::from_slice::<Vec<String>>(body)
            .unwrap_or_else(|_| vec![excerpt(&String::from_utf8_lossy(body))])
    }

    /// Writes the response, closing the connection after it.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: vmm API\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status)
        );
        let body = self.body.as_deref().unwrap_or_default();
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if self.status != 204 {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        out.write_all(&message)?;
        out.flush()
    }
}

/// Writes a request for `path` with an optional JSON body.
pub fn write_request(
    out: &mut impl Write,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut message = format!(
        "{} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n",
        method.as_str()
    );
    match body {
        Some(body) => message.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )),
        None => message.push_str("Content-Length: 0\r\n\r\n"),
    }
    let mut bytes = message.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    out.write_all(&bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> Request {
        match parse_request(input, &Limits::default()).unwrap() {
            Parsed::Complete { message, consumed } => {
                assert_eq!(consumed, input.len());
                message
            }
            other => panic!("incomplete: {other:?}"),
        }
    }

    #[test]
    fn parses_requests_as_curl_sends_them() {
        let r = complete(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/api/v1/vmm.ping");
        assert!(r.body.is_empty());
        let r = complete(
            b"PUT /api/v1/vm.boot?x=1 HTTP/1.1\r\ncontent-length: 16\r\n\r\n{\"paused\": true}",
        );
        assert_eq!(r.method, Method::Put);
        assert_eq!(r.path, "/api/v1/vm.boot");
        assert_eq!(r.body, b"{\"paused\": true}");
    }

    #[test]
    fn waits_for_the_whole_message() {
        let full = b"PUT /a HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nabcd";
        for cut in 0..full.len() {
            match parse_request(&full[..cut], &Limits::default()).unwrap() {
                Parsed::Incomplete { expects_continue } => {
                    assert_eq!(expects_continue, cut >= full.len() - 4, "{cut}")
                }
                other => panic!("{cut}: {other:?}"),
            }
        }
        assert!(complete(full).expects_continue);
    }

    #[test]
    fn malformed_requests_get_typed_errors() {
        let limits = Limits::default();
        type Case = (&'static [u8], fn(&HttpError) -> bool);
        let cases: &[Case] = &[
            (b"GET\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedStartLine { .. })
            }),
            (b"GET / HTTP/1.1 x\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedStartLine { .. })
            }),
            (b"DELETE / HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::UnsupportedMethod { .. })
            }),
            (b"GET / HTTP/2\r\n\r\n", |e| {
                matches!(e, HttpError::UnsupportedVersion { .. })
            }),
            (b"GET api HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::BadTarget { .. })
            }),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", |e| {
                matches!(e, HttpError::MalformedHeader { .. })
            }),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", |e| {
                matches!(e, HttpError::BadContentLength { .. })
            }),
            (b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", |e| {
                matches!(e, HttpError::BadContentLength { .. })
            }),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                |e| matches!(e, HttpError::BadContentLength { .. }),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                |e| matches!(e, HttpError::BadContentLength { .. }),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
                |e| matches!(e, HttpError::BodyTooLarge { .. }),
            ),
            (
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                |e| matches!(e, HttpError::TransferEncodingUnsupported { .. }),
            ),
            (b"GET /\xff HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::HeadNotText)
            }),
        ];
        for (input, check) in cases {
            let err = parse_request(input, &limits).unwrap_err();
            assert!(check(&err), "{:?}: {err:?}", String::from_utf8_lossy(input));
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn limits_hold_before_the_bytes_are_kept() {
        let limits = Limits {
            max_head: 64,
            max_headers: 2,
            max_body: 8,
            deadline: Duration::from_secs(1),
        };
        let long = vec![b'a'; 100];
        assert_eq!(
            parse_request(&long, &limits).unwrap_err(),
            HttpError::HeadTooLarge { max: 64 }
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", &limits).unwrap_err(),
            HttpError::TooManyHeaders { max: 2 }
        );
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 9\r\n\r\n", &limits).unwrap_err(),
            HttpError::BodyTooLarge { length: 9, max: 8 }
        );
        // Hostile text in an error is shortened and escaped.
        let err = parse_request(
            format!("GET / HTTP/1.1\r\n{}\u{7}\r\n\r\n", "x".repeat(30)).as_bytes(),
            &Limits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\\u{7}"), "{err}");
    }

    #[test]
    fn responses_round_trip() {
        for response in [
            Response::no_content(),
            Response::ok_json(b"{\"version\":\"1\"}".to_vec()),
            Response::error(405, &["VM is not running".to_string()]),
        ] {
            let mut wire = Vec::new();
            response.write_to(&mut wire).unwrap();
            match parse_response(&wire, &Limits::default()).unwrap() {
                Parsed::Complete { message, consumed } => {
                    assert_eq!(message, response);
                    assert_eq!(consumed, wire.len());
                }
                other => panic!("{other:?}"),
            }
        }
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert!(matches!(
            parse_response(interim, &Limits::default()).unwrap(),
            Parsed::Complete {
                message: Response {
                    status: 204,
                    body: None
                },
                ..
            }
        ));
        assert_eq!(
            Response::error(400, &["a".into(), "b".into()]).error_messages(),
            vec!["a", "b"]
        );
        assert!(parse_response(b"HTTP/1.1 20 OK\r\n\r\n", &Limits::default()).is_err());
    }

    #[test]
    fn requests_written_parse_back() {
        let mut wire = Vec::new();
        write_request(&mut wire, Method::Put, "/api/v1/vm.create", Some(b"{}")).unwrap();
        let r = complete(&wire);
        assert_eq!(
            (r.method, r.path.as_str(), r.body.as_slice()),
            (Method::Put, "/api/v1/vm.create", &b"{}"[..])
        );
    }

    #[test]
    fn reading_a_socket_is_bounded_in_time() {
        let (mut server, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let limits = Limits {
            deadline: Duration::from_millis(100),
            ..Limits::default()
        };
        let start = Instant::now();
        assert_eq!(
            read_request(&mut server, &limits).unwrap_err(),
            HttpError::Timeout { ms: 100 }
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        client.write_all(b"\r\n").unwrap();
        drop(client);
        // What is left is a blank line and then the end: truncated.
        assert!(matches!(
            read_request(&mut server, &limits).unwrap_err(),
            HttpError::MalformedStartLine { .. } | HttpError::Truncated { .. }
        ));
    }
}
