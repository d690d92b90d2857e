//! The `http` processor: POST each record as JSON, classify the answer.
//!
//! `{"id": sample_id, "data": payload}` goes to the URL with `Content-Type:
//! application/json` and `Idempotency-Key: <sample_id>:<attempt>`. A 2xx is a success (the
//! body, bounded, becomes the response); 408, 425, 429, 500, 502, 503, 504 (configurable),
//! connection failures and a connection closed mid-response are transient, honouring
//! `Retry-After`; every other status is permanent.

use std::collections::HashSet;
use std::error::Error as _;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, Response, Url};

use super::{MAX_RESPONSE_BYTES, Processor, Record};
use crate::error::{Error, Result};
use crate::outcome::{Outcome, RetryAfter};

/// The statuses that are transient unless configured otherwise.
pub const DEFAULT_TRANSIENT_STATUSES: [u16; 7] = [408, 425, 429, 500, 502, 503, 504];

/// Most bytes of an error response's body quoted in the error message.
const MAX_ERROR_BODY: usize = 200;

/// Posts records to an HTTP endpoint over a pooled client (rustls TLS).
#[derive(Debug, Clone)]
pub struct HttpProcessor {
    client: Client,
    url: Url,
    headers: HeaderMap,
    transient: HashSet<u16>,
    max_response_bytes: usize,
}

impl HttpProcessor {
    /// A builder for a processor posting to `url`.
    pub fn builder(url: &str) -> HttpProcessorBuilder {
        HttpProcessorBuilder {
            url: url.to_owned(),
            headers: Vec::new(),
            transient: DEFAULT_TRANSIENT_STATUSES.to_vec(),
            max_response_bytes: MAX_RESPONSE_BYTES,
            pool_size: 16,
        }
    }

    async fn call(&self, record: &Record) -> Outcome {
        let body = serde_json::json!({"id": record.sample_id, "data": record.payload});
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", record.idempotency_key())
            .body(body.to_string());
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return transport_failure(&e),
        };
        let status = response.status();
        if status.is_success() {
            return match read_bounded(response, self.max_response_bytes).await {
                Ok(body) => Outcome::Success {
                    response: Some(String::from_utf8_lossy(&body).into_owned()),
                },
                Err(e) => transport_failure(&e),
            };
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut error = format!(
            "HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_owned();
        if let Ok(body) = read_bounded(response, MAX_ERROR_BODY).await {
            let body = String::from_utf8_lossy(&body);
            let body = body.trim();
            if !body.is_empty() {
                error.push_str(": ");
                error.push_str(body);
            }
        }
        if self.transient.contains(&status.as_u16()) {
            Outcome::Transient { error, retry_after }
        } else {
            Outcome::Permanent { error }
        }
    }
}

#[async_trait]
impl Processor for HttpProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        self.call(record).await
    }
}

/// Reads at most `limit` bytes of a body; the rest is never read (the connection closes).
async fn read_bounded(mut response: Response, limit: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < limit {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

/// Names a failure to reach the server or to read its answer. All are transient. The
/// message never includes the URL or headers (they may carry secrets).
fn transport_failure(e: &reqwest::Error) -> Outcome {
    let mut io_kind = None;
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
            break;
        }
        cause = c.source();
    }
    use std::io::ErrorKind;
    let message = match io_kind {
        Some(ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(ErrorKind::ConnectionReset) => "connection reset".to_owned(),
        _ if e.is_timeout() => "timeout".to_owned(),
        _ if e.is_body() || e.is_decode() => "connection closed mid-response".to_owned(),
        _ if e.is_connect() => format!("connection failed: {}", root_cause(e)),
        _ => {
            let cause = root_cause(e);
            if cause.contains("closed before message completed")
                || cause.contains("IncompleteMessage")
            {
                "connection closed mid-response".to_owned()
            } else {
                format!("request failed: {cause}")
            }
        }
    };
    Outcome::transient(message)
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if std::ptr::addr_eq(cause, e) {
        return e.to_string();
    }
    cause.to_string()
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<RetryAfter> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(RetryAfter::Delay(std::time::Duration::from_secs(secs)));
    }
    DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|t| RetryAfter::At(t.with_timezone(&Utc)))
}

/// Builds an [`HttpProcessor`], checking the URL and headers.
#[derive(Debug, Clone)]
pub struct HttpProcessorBuilder {
    url: String,
    headers: Vec<(String, String, bool)>,
    transient: Vec<u16>,
    max_response_bytes: usize,
    pool_size: usize,
}

impl HttpProcessorBuilder {
    /// Adds a header sent with every call.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.to_owned(), false));
        self
    }

    /// Adds a header whose value is a secret: marked sensitive, never logged or shown.
    pub fn secret_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned(), true));
        self
    }

    /// Sets the statuses that are transient. Default value is
    /// [`DEFAULT_TRANSIENT_STATUSES`].
    pub fn transient_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.transient = statuses.into_iter().collect();
        self
    }

    /// Sets the most bytes of a success body kept as the response. Default value is 64 KiB.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Sets how many idle connections are kept (match the round's concurrency).
    /// Default value is `16`.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections;
        self
    }

    /// Checks the settings and builds the processor.
    pub fn build(self) -> Result<HttpProcessor> {
        let invalid = |m: String| Error::InvalidConfig(m);
        let url = Url::parse(&self.url)
            .map_err(|e| invalid(format!("invalid --url '{}': {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "invalid --url '{}': expected http:// or https://",
                self.url
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value, secret) in &self.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(format!("invalid header name '{name}'")))?;
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
                invalid(format!(
                    "invalid value for header '{name}' (value not shown)"
                ))
            })?;
            value.set_sensitive(*secret || is_secret_name(&header));
            headers.append(header, value);
        }
        if let Some(bad) = self.transient.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(invalid(format!(
                "invalid transient status {bad}: expected 100 to 599"
            )));
        }
        let client = Client::builder()
            .pool_max_idle_per_host(self.pool_size)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {}", e.without_url())))?;
        Ok(HttpProcessor {
            client,
            url,
            headers,
            transient: self.transient.into_iter().collect(),
            max_response_bytes: self.max_response_bytes,
        })
    }
}

fn is_secret_name(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == "authorization"
        || name == "proxy-authorization"
        || name.contains("token")
        || name.contains("key")
        || name.contains("secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_both_forms() {
        assert_eq!(
            parse_retry_after(" 120 "),
            Some(RetryAfter::Delay(std::time::Duration::from_secs(120)))
        );
        let at = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            at,
            RetryAfter::At("2015-10-21T07:28:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
        assert!(matches!(
            parse_retry_after("99999999999999999999999"),
            Some(RetryAfter::Delay(_))
        ));
    }

    #[test]
    fn bad_settings_are_refused_without_showing_values() {
        let err = HttpProcessor::builder("ftp://x").build().unwrap_err();
        assert!(err.to_string().contains("expected http"));
        let err = HttpProcessor::builder("http://x")
            .secret_header("Authorization", "Bearer sec\nret")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("sec"), "{err}");
        assert!(
            HttpProcessor::builder("http://x")
                .transient_statuses([700])
                .build()
                .is_err()
        );
    }
}
