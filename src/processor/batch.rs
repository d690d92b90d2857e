//! Batch processors: one call for many records, one outcome per record.
//!
//! A round configured with a [`BatchProcessor`] cuts its due records into batches of at
//! most [`RoundConfig::call_batch`](crate::RoundConfig::call_batch) and calls the
//! processor once per batch, up to `concurrency` batches at once. Every guarantee holds per
//! record: each record's own outcome is journaled, decided and placed as if it had been
//! called alone.
//!
//! The built-in `http` and `command` processors read a batch's answer in one shape, a list
//! of items (see [`read_item`]):
//!
//! ```json
//! {"id": "S-1", "outcome": "success", "response": {"stored": true}}
//! {"id": "S-2", "outcome": "transient", "error": "deadlock", "retry_after": 30}
//! {"id": "S-3", "status": 422, "error": "unknown lab"}
//! ```

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{MAX_RESPONSE_BYTES, Record};
use crate::input::json_kind;
use crate::outcome::{ErrorClass, Outcome, RetryAfter};

/// Sends many records to an external system in one call and classifies what happened to
/// each.
///
/// Return one [`Outcome`] per record, in the order of `records`. A record left without an
/// outcome (a shorter list) fails transiently; outcomes past the last record are ignored.
/// A call that outlives the round's timeout fails every record of its batch transiently,
/// and so does a panic (the record that caused it cannot be told from its batch-mates).
///
/// ```
/// use async_trait::async_trait;
/// use retrylake::{BatchProcessor, Outcome, Record};
///
/// /// Accepts the records whose payload is ASCII, all in one call.
/// struct AsciiOnly;
///
/// #[async_trait]
/// impl BatchProcessor for AsciiOnly {
///     async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
///         records
///             .iter()
///             .map(|r| match r.payload.as_deref() {
///                 Some(p) if p.is_ascii() => Outcome::success("stored"),
///                 _ => Outcome::permanent("payload is not ASCII"),
///             })
///             .collect()
///     }
/// }
/// ```
#[async_trait]
pub trait BatchProcessor: Send + Sync {
    /// Processes `records` in one call: one outcome per record, in their order.
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome>;
}

/// A borrowed batch processor is a batch processor, so a layer can wrap one it does not
/// own.
#[async_trait]
impl<P: BatchProcessor + ?Sized> BatchProcessor for &P {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        (**self).process_batch(records).await
    }
}

/// Most bytes of a batch's answer (a body, a command's stdout) read: at most 64 KiB a
/// record, and 64 MiB in all.
pub(crate) const MAX_BATCH_ANSWER: usize = 64 << 20;

/// The error of a record a batch call gave no outcome for.
pub const NO_OUTCOME: &str = "the batch call gave no outcome for this record";

/// Makes `outcomes` exactly one per record: a missing one is a transient failure
/// ([`NO_OUTCOME`]), extra ones are dropped (and logged).
pub(crate) fn one_per_record(mut outcomes: Vec<Outcome>, records: usize) -> Vec<Outcome> {
    if outcomes.len() > records {
        tracing::warn!(
            outcomes = outcomes.len(),
            records,
            "the batch processor gave more outcomes than records; the extra ones are ignored"
        );
        outcomes.truncate(records);
    }
    outcomes.resize(records, Outcome::transient(NO_OUTCOME));
    outcomes
}

/// The idempotency key of a batch: `batch-` and a hash of its records' own keys, so the
/// same records at the same attempts give the same key (after a crash, say).
pub fn batch_key(records: &[Record]) -> String {
    let mut bytes = Vec::new();
    for key in records.iter().map(Record::idempotency_key) {
        // Length-prefixed, so no two lists of keys give the same bytes.
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
    }
    format!("batch-{:016x}", crate::hash::stable_hash(&[&bytes]))
}

/// One record of a batch as the built-in batch processors send it: `{"id", "data",
/// "attempt", "idempotency_key"}`.
pub(crate) fn record_json(record: &Record) -> Value {
    serde_json::json!({
        "id": record.sample_id,
        "data": record.payload,
        "attempt": record.retry_count,
        "idempotency_key": record.idempotency_key(),
    })
}

/// Reads one item of a batch's answer: an object naming its record by `"id"` (a string)
/// with either `"outcome"` (`"success"`, `"transient"` or `"permanent"`) or an HTTP-style
/// `"status"` (2xx is success, one `transient_status` accepts is transient, anything else
/// permanent). A success keeps `"response"` (a string as it is, other JSON as its text); a
/// failure keeps `"error"` as its message, and a transient one may ask for
/// `"retry_after"` seconds. Returns the record's id and outcome, or what is wrong with
/// the item.
pub fn read_item(
    item: &Value,
    transient_status: impl Fn(u16) -> bool,
) -> Result<(String, Outcome), String> {
    let Value::Object(fields) = item else {
        return Err(format!("expected an object, got {}", json_kind(item)));
    };
    let id = match fields.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(other) => return Err(format!("\"id\" is {}, expected a string", json_kind(other))),
        None => return Err("no \"id\"".into()),
    };
    let text = |name: &str, limit: usize| -> Option<String> {
        let value = fields.get(name)?;
        let text = match value {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Some(bounded(text, limit))
    };
    let error = || text("error", MAX_ITEM_ERROR).unwrap_or_else(|| "no error given".into());
    let kind = match (fields.get("outcome"), fields.get("status")) {
        (Some(Value::String(o)), _) => match o.as_str() {
            "success" => Kind::Success,
            "transient" => Kind::Transient,
            "permanent" => Kind::Permanent,
            other => {
                return Err(format!(
                    "unknown \"outcome\" '{}' (expected success, transient or permanent)",
                    bounded(other.to_owned(), 100)
                ));
            }
        },
        (Some(other), _) => {
            return Err(format!(
                "\"outcome\" is {}, expected a string",
                json_kind(other)
            ));
        }
        (None, Some(status)) => match status.as_u64() {
            Some(200..=299) => Kind::Success,
            Some(s) if (100..=599).contains(&s) => {
                let status = s as u16;
                if transient_status(status) {
                    Kind::Transient
                } else {
                    Kind::Permanent
                }
            }
            _ => return Err(format!("\"status\" {status} is not an HTTP status")),
        },
        (None, None) => return Err("neither \"outcome\" nor \"status\"".into()),
    };
    // A class the item names, else its status.
    let class = match (
        fields.get("class"),
        fields.get("status").and_then(Value::as_u64),
    ) {
        (Some(Value::String(name)), _) => Some(ErrorClass::Named(bounded(name.clone(), 200))),
        (_, Some(status)) => u16::try_from(status).ok().map(ErrorClass::Status),
        _ => None,
    };
    let outcome = match kind {
        Kind::Success => Outcome::Success {
            response: text("response", MAX_RESPONSE_BYTES),
        },
        Kind::Permanent => Outcome::Permanent {
            error: error(),
            class,
        },
        Kind::Transient => Outcome::Transient {
            error: error(),
            retry_after: fields
                .get("retry_after")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| {
                    RetryAfter::Delay(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
                }),
            class,
        },
    };
    Ok((id, outcome))
}

enum Kind {
    Success,
    Transient,
    Permanent,
}

/// Longest error message kept from an item of a batch's answer.
const MAX_ITEM_ERROR: usize = 1000;

/// `text` cut to at most `limit` bytes, on a character boundary.
fn bounded(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Collects the items of a batch's answer into one outcome per record of the batch.
pub(crate) struct Answers<'a> {
    index: HashMap<&'a str, usize>,
    outcomes: Vec<Option<Outcome>>,
    /// How many items could not be read, and the first of them (its place and why).
    refused: usize,
    first_refused: Option<String>,
}

impl<'a> Answers<'a> {
    /// An empty answer for `records`.
    pub(crate) fn new(records: &'a [Record]) -> Self {
        Answers {
            index: records
                .iter()
                .enumerate()
                .map(|(i, r)| (r.sample_id.as_str(), i))
                .collect(),
            outcomes: vec![None; records.len()],
            refused: 0,
            first_refused: None,
        }
    }

    /// Takes one item's outcome. An item for a record not in the batch is ignored; a
    /// second item for one record makes it a transient failure unless both agree.
    pub(crate) fn answer(&mut self, id: &str, outcome: Outcome) {
        let Some(&i) = self.index.get(id) else {
            return;
        };
        match &self.outcomes[i] {
            None => self.outcomes[i] = Some(outcome),
            Some(first) if *first == outcome => {}
            Some(_) => {
                self.outcomes[i] = Some(Outcome::transient(
                    "the batch's answer gives this record two different outcomes",
                ))
            }
        }
    }

    /// Counts an item that could not be read: `place` names it (`item 3 of the answer`),
    /// `why` says what is wrong. The first is named in the error of the records no item
    /// answered, and in one log line for the whole answer.
    pub(crate) fn refuse(&mut self, place: impl FnOnce() -> String, why: String) {
        self.refused += 1;
        if self.first_refused.is_none() {
            self.first_refused = Some(format!("{}: {why}", place()));
        }
    }

    /// One outcome per record: each item's, or for a record no item answered, `missing`
    /// (with the first unreadable item named in a failure's message).
    pub(crate) fn finish(self, missing: impl Fn() -> Outcome) -> Vec<Outcome> {
        let first = self.first_refused;
        if let Some(first) = &first {
            tracing::warn!(
                unreadable = self.refused,
                "{} item(s) of a batch's answer could not be read; the first: {first}",
                self.refused
            );
        }
        self.outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    let mut outcome = missing();
                    if let (
                        Some(reason),
                        Outcome::Transient { error, .. } | Outcome::Permanent { error, .. },
                    ) = (&first, &mut outcome)
                    {
                        error.push_str(" (");
                        error.push_str(reason);
                        error.push(')');
                    }
                    outcome
                })
            })
            .collect()
    }
}

/// Reads a batch's answer, as text: per-item results (a JSON array of items, or an object
/// with a `"results"` array; see [`read_item`]) give each record its own outcome, and a
/// record no item names fails transiently; any other answer (empty, text, another JSON
/// value) is a success for every record, the text its response. A byte-order mark is
/// skipped, and results sent as a JSON string are read from inside it. An answer that
/// starts as per-item results but cannot be read (cut short, malformed, or holding more
/// items than twice the records and 16) fails every record transiently: a failure is
/// never taken for a success. Items are read one at a time, so memory stays that of the
/// answer's text.
pub(crate) fn read_answer(
    text: &str,
    records: &[Record],
    transient: impl Fn(u16) -> bool,
) -> Vec<Outcome> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let mut answers = Answers::new(records);
    let read = match trimmed.as_bytes().first() {
        Some(b'[' | b'{') => {
            let mut items = Items {
                answers: &mut answers,
                transient: &transient,
                count: 0,
                max: records.len().saturating_mul(2).saturating_add(16),
                seen_results: false,
            };
            let mut de = serde_json::Deserializer::from_str(trimmed);
            serde::de::DeserializeSeed::deserialize(&mut items, &mut de)
                .and_then(|()| de.end())
                .map(|()| items.seen_results)
        }
        Some(b'"') => {
            return match serde_json::from_str::<String>(trimmed) {
                Ok(inner) if inner.trim_start().starts_with(['[', '{']) => {
                    read_answer(&inner, records, transient)
                }
                _ => all_succeeded(text, records.len()),
            };
        }
        _ => return all_succeeded(text, records.len()),
    };
    match read {
        Ok(true) => answers
            .finish(|| Outcome::transient("the batch's answer has no result for this record")),
        // An object without "results": not per-item results.
        Ok(false) => all_succeeded(text, records.len()),
        Err(e) => vec![
            Outcome::transient(format!("the batch's answer could not be read: {e}"));
            records.len()
        ],
    }
}

/// Every record of a batch succeeded, with `text` (bounded) as its response.
fn all_succeeded(text: &str, records: usize) -> Vec<Outcome> {
    vec![Outcome::success(bounded(text.to_owned(), MAX_RESPONSE_BYTES)); records]
}

/// Reads the items of an answer one at a time into [`Answers`]: the top-level array, or
/// the `"results"` array of the top-level object (whose other fields are skipped).
struct Items<'r, 'a, F> {
    answers: &'r mut Answers<'a>,
    transient: &'r F,
    count: usize,
    max: usize,
    /// Whether an array of results was found.
    seen_results: bool,
}

impl<'de, F: Fn(u16) -> bool> serde::de::DeserializeSeed<'de> for &mut Items<'_, '_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fn(u16) -> bool> serde::de::Visitor<'de> for &mut Items<'_, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of results, or an object with a \"results\" array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.seen_results {
            return Err(serde::de::Error::custom("two \"results\" arrays"));
        }
        self.seen_results = true;
        while let Some(item) = seq.next_element::<Value>()? {
            self.count += 1;
            if self.count > self.max {
                return Err(serde::de::Error::custom(format!(
                    "more than {} items for {} records",
                    self.max,
                    self.answers.outcomes.len()
                )));
            }
            let n = self.count;
            match read_item(&item, self.transient) {
                Ok((id, outcome)) => self.answers.answer(&id, outcome),
                Err(e) => self.answers.refuse(|| format!("item {n} of the answer"), e),
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "results" {
                map.next_value_seed(ResultsArray(&mut *self))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The value of `"results"`: must be an array.
struct ResultsArray<'i, 'r, 'a, F>(&'i mut Items<'r, 'a, F>);

impl<'de, F: Fn(u16) -> bool> serde::de::DeserializeSeed<'de> for ResultsArray<'_, '_, '_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        struct Only<'i, 'r, 'a, F>(&'i mut Items<'r, 'a, F>);
        impl<'de, F: Fn(u16) -> bool> serde::de::Visitor<'de> for Only<'_, '_, '_, F> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"results\" as an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
                serde::de::Visitor::visit_seq(&mut *self.0, seq)
            }
        }
        d.deserialize_seq(Only(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, retry_count: u32) -> Record {
        Record {
            sample_id: id.into(),
            payload: Some("p".into()),
            retry_count,
        }
    }

    fn item(text: &str) -> Result<(String, Outcome), String> {
        read_item(&serde_json::from_str(text).unwrap(), |s| {
            crate::processor::http::DEFAULT_TRANSIENT_STATUSES.contains(&s)
        })
    }

    #[test]
    fn items_name_their_record_and_outcome() {
        assert_eq!(
            item(r#"{"id": "A", "outcome": "success", "response": {"ok": 1}}"#),
            Ok(("A".into(), Outcome::success(r#"{"ok":1}"#)))
        );
        assert_eq!(
            item(r#"{"id": "A", "outcome": "success"}"#),
            Ok(("A".into(), Outcome::Success { response: None }))
        );
        assert_eq!(
            item(r#"{"id": "B", "outcome": "transient", "error": "busy", "retry_after": 30}"#),
            Ok((
                "B".into(),
                Outcome::Transient {
                    error: "busy".into(),
                    retry_after: Some(RetryAfter::Delay(Duration::from_secs(30))),
                    class: None,
                }
            ))
        );
        assert_eq!(
            item(r#"{"id": "C", "status": 429}"#),
            Ok((
                "C".into(),
                Outcome::transient("no error given").with_class(ErrorClass::Status(429))
            ))
        );
        assert_eq!(
            item(r#"{"id": "C", "status": 422, "error": "bad lab"}"#),
            Ok((
                "C".into(),
                Outcome::permanent("bad lab").with_class(ErrorClass::Status(422))
            ))
        );
        // A class named wins over the status.
        assert_eq!(
            item(r#"{"id": "C", "status": 500, "class": "deadlock", "error": "x"}"#),
            Ok(("C".into(), Outcome::transient("x").with_class("deadlock")))
        );
        assert_eq!(
            item(r#"{"id": "C", "status": 201}"#),
            Ok(("C".into(), Outcome::Success { response: None }))
        );
        // The largest retry_after is as long as can be; a negative one is none.
        let Ok((_, Outcome::Transient { retry_after, .. })) =
            item(r#"{"id": "B", "outcome": "transient", "retry_after": 1e300}"#)
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(RetryAfter::Delay(Duration::MAX)));
        let Ok((_, Outcome::Transient { retry_after, .. })) =
            item(r#"{"id": "B", "outcome": "transient", "retry_after": -1}"#)
        else {
            panic!()
        };
        assert_eq!(retry_after, None);
    }

    #[test]
    fn a_malformed_item_says_what_is_wrong() {
        for (text, wrong) in [
            ("[1]", "expected an object, got an array"),
            (r#"{"outcome": "success"}"#, "no \"id\""),
            (r#"{"id": 7, "outcome": "success"}"#, "\"id\" is a number"),
            (r#"{"id": "A"}"#, "neither \"outcome\" nor \"status\""),
            (
                r#"{"id": "A", "outcome": "ok"}"#,
                "unknown \"outcome\" 'ok'",
            ),
            (r#"{"id": "A", "outcome": 1}"#, "\"outcome\" is a number"),
            (r#"{"id": "A", "status": 99}"#, "not an HTTP status"),
            (r#"{"id": "A", "status": "200"}"#, "not an HTTP status"),
        ] {
            let err = item(text).unwrap_err();
            assert!(err.contains(wrong), "{text}: {err}");
        }
    }

    #[test]
    fn answers_give_one_outcome_per_record() {
        let records = [
            record("A", 0),
            record("B", 0),
            record("C", 0),
            record("D", 0),
        ];
        let mut answers = Answers::new(&records);
        answers.answer("A", Outcome::success("ok"));
        answers.answer("Z", Outcome::success("ok"));
        answers.answer("B", Outcome::permanent("no"));
        answers.answer("B", Outcome::permanent("no"));
        answers.answer("C", Outcome::success("ok"));
        answers.answer("C", Outcome::permanent("no"));
        answers.refuse(|| "line 3".into(), "not JSON".into());
        answers.refuse(|| "line 4".into(), "not JSON".into());
        let outcomes = answers.finish(|| Outcome::transient("no answer"));
        assert_eq!(
            outcomes,
            [
                Outcome::success("ok"),
                Outcome::permanent("no"),
                Outcome::transient("the batch's answer gives this record two different outcomes"),
                Outcome::transient("no answer (line 3: not JSON)"),
            ]
        );
    }

    #[test]
    fn outcomes_are_made_one_per_record() {
        let ok = Outcome::success("ok");
        assert_eq!(
            one_per_record(vec![ok.clone()], 2),
            [ok.clone(), Outcome::transient(NO_OUTCOME)]
        );
        assert_eq!(one_per_record(vec![ok.clone(); 3], 1), [ok]);
    }

    #[test]
    fn a_batch_key_depends_on_its_records_and_attempts() {
        let a = batch_key(&[record("A", 0), record("B", 0)]);
        assert!(a.starts_with("batch-") && a.len() == 22, "{a}");
        assert_eq!(a, batch_key(&[record("A", 0), record("B", 0)]));
        assert_ne!(a, batch_key(&[record("A", 0), record("B", 1)]));
        assert_ne!(a, batch_key(&[record("A", 0)]));
        // Keys are length-prefixed: ids holding separators do not meet.
        assert_ne!(
            batch_key(&[record("x", 1), record("1:y", 0)]),
            batch_key(&[record("x:1\n1:y", 0)])
        );
    }

    fn answer_of(text: &str, ids: &[&str]) -> Vec<Outcome> {
        let records: Vec<Record> = ids.iter().map(|id| record(id, 0)).collect();
        read_answer(text, &records, |s| s == 503)
    }

    #[test]
    fn an_answer_is_read_per_item_or_for_all() {
        let items = r#"[{"id": "A", "outcome": "success"}, {"id": "B", "status": 503}]"#;
        let per_item = [
            Outcome::Success { response: None },
            Outcome::transient("no error given").with_class(ErrorClass::Status(503)),
        ];
        for text in [
            items.to_owned(),
            format!("\u{feff}  {items}"),
            format!(r#"{{"took": 3, "results": {items}, "errors": true}}"#),
            serde_json::to_string(items).unwrap(),
        ] {
            assert_eq!(answer_of(&text, &["A", "B"]), per_item, "{text}");
        }
        // Not per-item results: a success for all, the text its response.
        for text in ["", "stored", r#"{"stored": 2}"#, "42", r#""done""#] {
            assert_eq!(
                answer_of(text, &["A", "B"]),
                vec![Outcome::success(text); 2],
                "{text}"
            );
        }
        // Starts as results but cannot be read: transient for all.
        for (text, why) in [
            (r#"[{"id": "A", "outcome": "success"}"#, "EOF"),
            (r#"{"results": {"A": "ok"}}"#, "\"results\" as an array"),
            (
                r#"{"results": [], "results": []}"#,
                "two \"results\" arrays",
            ),
            (
                "[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]",
                "more than 18 items for 1 records",
            ),
            (r#"[] trailing"#, "trailing characters"),
        ] {
            let outcomes = answer_of(text, &["A"]);
            let Outcome::Transient { error, .. } = &outcomes[0] else {
                panic!("{text}: {outcomes:?}")
            };
            assert!(
                error.starts_with("the batch's answer could not be read") && error.contains(why),
                "{text}: {error}"
            );
        }
    }
}
