//! The `http` processor: POST each record as JSON, classify the answer.
//!
//! `{"id": sample_id, "data": payload}` goes to the URL with `Content-Type:
//! application/json` and `Idempotency-Key: <sample_id>:<retry_count>` (a batch goes as a
//! JSON array, see [`HttpProcessor`]'s [`BatchProcessor`] implementation). A 2xx is a success (the
//! body, bounded, becomes the response); 408, 425, 429, 500, 502, 503, 504 (configurable),
//! connection failures and a connection closed mid-response are transient, honouring
//! `Retry-After`; every other status is permanent.

use std::collections::HashSet;
use std::error::Error as _;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
};
use reqwest::{Client, Response, Url};

use super::batch::{MAX_BATCH_ANSWER, batch_key, read_answer, record_json};
use super::{BatchProcessor, MAX_RESPONSE_BYTES, Processor, Record};
use crate::error::{Error, Result};
use crate::outcome::{ErrorClass, Outcome, RetryAfter};

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

/// The redirects a POST follows: 307 and 308 (which keep the method and the body), to the
/// same origin (so no header goes elsewhere), at most 5. A 301, 302 or 303 would turn the
/// POST into a GET without its body, whose 2xx says nothing of the record: it is
/// answered as the status it is.
fn redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // The same scheme, host and port: nothing (a body, a secret header) goes elsewhere.
        let same_host = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        let keeps_body = matches!(attempt.status().as_u16(), 307 | 308);
        if same_host && keeps_body && attempt.previous().len() <= 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
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

    /// POSTs the JSON `body` as it is, with `key` as its idempotency key: a success on a
    /// 2xx read to its end (how dead-letter alerts reach a webhook).
    pub(crate) async fn post_json(&self, body: String, key: String) -> Outcome {
        match self.post(body, key).await {
            Ok(response) => match read_bounded(response, self.max_response_bytes).await {
                Ok(_) => Outcome::Success { response: None },
                Err(e) => transport_failure(&e),
            },
            Err(failed) => failed,
        }
    }

    /// POSTs `body` with `key` as its idempotency key: the 2xx response, or the outcome of
    /// a call that failed (every record of a batch shares it).
    async fn post(&self, body: String, key: String) -> std::result::Result<Response, Outcome> {
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(body);
        let response = request.send().await.map_err(|e| transport_failure(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
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
        // A redirect not followed (see `redirects`) says where it pointed.
        if status.is_redirection()
            && let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
        {
            let location: String = location
                .chars()
                .filter(|c| !c.is_control())
                .take(500)
                .collect();
            error.push_str(&format!(" (not followed: Location {location})"));
        }
        if let Ok(body) = read_bounded(response, MAX_ERROR_BODY).await {
            let body = String::from_utf8_lossy(&body);
            let body = body.trim();
            if !body.is_empty() {
                error.push_str(": ");
                error.push_str(body);
            }
        }
        let class = Some(ErrorClass::Status(status.as_u16()));
        Err(if self.transient.contains(&status.as_u16()) {
            Outcome::Transient {
                error,
                retry_after,
                class,
            }
        } else {
            Outcome::Permanent { error, class }
        })
    }

    async fn call(&self, record: &Record) -> Outcome {
        let body = serde_json::json!({"id": record.sample_id, "data": record.payload});
        let response = match self.post(body.to_string(), record.idempotency_key()).await {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        match read_bounded(response, self.max_response_bytes).await {
            Ok(body) => Outcome::Success {
                response: Some(String::from_utf8_lossy(&body).into_owned()),
            },
            Err(e) => transport_failure(&e),
        }
    }

    async fn call_batch(&self, records: &[Record]) -> Vec<Outcome> {
        let body = serde_json::Value::Array(records.iter().map(record_json).collect());
        let all = |outcome: Outcome| vec![outcome; records.len()];
        let response = match self.post(body.to_string(), batch_key(records)).await {
            Ok(response) => response,
            Err(failed) => return all(failed),
        };
        let unreadable = |why: String| {
            all(Outcome::transient(format!(
                "the batch's answer could not be read: {why}"
            )))
        };
        // Built without decompression: a compressed answer cannot be read, and must not
        // pass for a success.
        if let Some(encoding) = response
            .headers()
            .get(CONTENT_ENCODING)
            .filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
            return unreadable(format!(
                "it is sent with Content-Encoding {encoding}, and only plain answers are read"
            ));
        }
        let limit = self
            .max_response_bytes
            .saturating_mul(records.len())
            .clamp(MAX_RESPONSE_BYTES, MAX_BATCH_ANSWER);
        match read_bounded(response, limit + 1).await {
            Ok(body) if body.len() > limit => all(Outcome::transient(format!(
                "the batch's answer is larger than {limit} bytes: not read (send smaller \
                 batches with --call-batch)"
            ))),
            Ok(body) => match std::str::from_utf8(&body) {
                Ok(text) => read_answer(text, records, |s| self.transient.contains(&s)),
                Err(e) => unreadable(format!("it is not UTF-8 text ({e})")),
            },
            Err(e) => all(transport_failure(&e)),
        }
    }
}

#[async_trait]
impl Processor for HttpProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        self.call(record).await
    }
}

/// Called with a batch, it POSTs a JSON array of `{"id", "data", "attempt",
/// "idempotency_key"}` (the batch's own key in the `Idempotency-Key` header) and reads
/// each record's outcome from the answer (see [`read_item`] for an item's shape). A
/// failed call (a non-2xx status, a timeout, a lost connection) is every record's
/// outcome; a 2xx without per-item results is a success for all.
#[async_trait]
impl BatchProcessor for HttpProcessor {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        self.call_batch(records).await
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

/// Parses `Retry-After` (RFC 9110, section 10.2.3): delta-seconds or an HTTP date, in the
/// preferred IMF-fixdate form or the obsolete RFC 850 and asctime forms a recipient must
/// accept. Never panics: delta-seconds past `u64::MAX` are `u64::MAX` seconds (the round's
/// `--max-retry-after` then applies), and anything else (a negative or fractional number, a
/// date no calendar holds, garbage) is no Retry-After at all.
pub fn parse_retry_after(value: &str) -> Option<RetryAfter> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: the only way to fail is to overflow.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(RetryAfter::Delay(std::time::Duration::from_secs(secs)));
    }
    http_date(value).map(RetryAfter::At)
}

/// An HTTP date: `Sun, 06 Nov 1994 08:49:37 GMT` (and what else RFC 2822 allows),
/// `Sunday, 06-Nov-94 08:49:37 GMT` or `Sun Nov  6 08:49:37 1994`.
fn http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc2822(value) {
        return Some(t.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|t| t.and_utc())
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
            .redirect(redirects())
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
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn at(rfc3339: &str) -> Option<RetryAfter> {
        Some(RetryAfter::At(rfc3339.parse::<DateTime<Utc>>().unwrap()))
    }

    fn secs(s: u64) -> Option<RetryAfter> {
        Some(RetryAfter::Delay(Duration::from_secs(s)))
    }

    #[test]
    fn retry_after_both_forms() {
        assert_eq!(parse_retry_after(" 120 "), secs(120));
        assert_eq!(parse_retry_after("\t0\t"), secs(0));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            at("2015-10-21T07:28:00Z")
        );
        // The obsolete forms RFC 9110 still asks a recipient to read.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT"),
            at("1994-11-06T08:49:37Z")
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994"),
            at("1994-11-06T08:49:37Z")
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            at("9999-12-31T23:59:59Z")
        );
    }

    #[test]
    fn hostile_retry_afters_are_clamped_or_ignored() {
        for huge in [
            "99999999999999999999",
            "18446744073709551616",
            "000000000000000000000000000000018446744073709551615",
        ] {
            assert_eq!(parse_retry_after(huge), secs(u64::MAX), "{huge}");
        }
        assert_eq!(parse_retry_after("0000120"), secs(120));
        // A date past 9999 is a date (the round's ceiling applies to it).
        assert_eq!(
            parse_retry_after("Sat, 01 Jan 10000 00:00:00 GMT"),
            at("+10000-01-01T00:00:00Z")
        );
        for junk in [
            "",
            "   ",
            "soon",
            "-5",
            "+5",
            "-99999999999999999999",
            "1.5",
            "0.0",
            "1e9",
            "NaN",
            "12 34",
            "120s",
            "Sat, 01 Jan 99999999999999999999 00:00:00 GMT",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 +99999",
            "Mon, 01 Jan -2015 00:00:00 GMT",
            "Sun Nov 99 08:49:37 1994",
            "\u{0}",
            "١٢٣",
        ] {
            assert_eq!(parse_retry_after(junk), None, "{junk:?}");
        }
    }

    /// An HTTP date's fields, valid or not.
    fn any_date_text() -> impl Strategy<Value = String> {
        let weekday = prop::sample::select(vec!["Mon", "Sun", "Sunday", "Xyz", ""]);
        let month = prop::sample::select(vec!["Jan", "Feb", "Dec", "Foo", ""]);
        let number = prop_oneof![
            0i128..100,
            any::<i64>().prop_map(i128::from),
            any::<u64>().prop_map(i128::from),
            Just(i128::MAX),
            Just(-1),
        ];
        let zone = prop::sample::select(vec!["GMT", "UT", "+0000", "-2359", "+9999", "Z", ""]);
        (
            weekday,
            number.clone(),
            month,
            number.clone(),
            (number.clone(), number.clone(), number),
            zone,
            0..4usize,
        )
            .prop_map(|(w, d, mo, y, (h, mi, s), z, form)| match form {
                0 => format!("{w}, {d:02} {mo} {y} {h:02}:{mi:02}:{s:02} {z}"),
                1 => format!("{w}, {d:02}-{mo}-{y} {h:02}:{mi:02}:{s:02} {z}"),
                2 => format!("{w} {mo} {d:>2} {h:02}:{mi:02}:{s:02} {y}"),
                _ => format!("{y}"),
            })
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panic(value in any::<String>()) {
            match parse_retry_after(&value) {
                Some(RetryAfter::Delay(_)) => prop_assert!(
                    value.trim().bytes().all(|b| b.is_ascii_digit())
                ),
                Some(RetryAfter::At(_)) | None => {}
            }
        }

        #[test]
        fn any_date_like_text_parses_without_panic(value in any_date_text()) {
            let _ = parse_retry_after(&value);
        }

        #[test]
        fn delta_seconds_saturate(
            digits in "[0-9]{1,60}",
            before in "[ \t]{0,3}",
            after in "[ \t]{0,3}",
        ) {
            let expected = digits.parse::<u64>().unwrap_or(u64::MAX);
            let parsed = parse_retry_after(&format!("{before}{digits}{after}"));
            prop_assert_eq!(parsed, secs(expected));
        }

        #[test]
        fn http_dates_round_trip(secs in -2_208_988_800i64..253_402_300_800) {
            // 1900-01-01 to 9999-12-31, in all three forms (RFC 850's two-digit year only
            // where it names one year: chrono reads 70-99 as 19xx and 00-69 as 20xx).
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let fixdate = t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            prop_assert_eq!(parse_retry_after(&fixdate), Some(RetryAfter::At(t)));
            let asctime = t.format("%a %b %e %H:%M:%S %Y").to_string();
            prop_assert_eq!(parse_retry_after(&asctime), Some(RetryAfter::At(t)));
            if (0..3_155_760_000).contains(&secs) {
                let rfc850 = t.format("%A, %d-%b-%y %H:%M:%S GMT").to_string();
                prop_assert_eq!(parse_retry_after(&rfc850), Some(RetryAfter::At(t)));
            }
        }
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
