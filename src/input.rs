//! Reading records to enqueue: JSON Lines, CSV and Parquet, validated whole before anything
//! is written.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use deltalake::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use deltalake::arrow::compute::{CastOptions, cast_with_options};
use deltalake::arrow::datatypes::{DataType, Schema};
use deltalake::arrow::json::WriterBuilder;
use deltalake::arrow::json::writer::LineDelimited;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// The format of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl std::str::FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "jsonl" | "json" | "ndjson" => Ok(InputFormat::Jsonl),
            "csv" => Ok(InputFormat::Csv),
            "parquet" => Ok(InputFormat::Parquet),
            other => Err(format!(
                "unknown format '{other}' (expected jsonl, csv or parquet)"
            )),
        }
    }
}

impl InputFormat {
    /// The format a file's extension names; JSON Lines when it names none.
    pub fn from_path(path: &Path) -> InputFormat {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(e) if e == "csv" => InputFormat::Csv,
            Some(e) if e == "parquet" || e == "pq" => InputFormat::Parquet,
            _ => InputFormat::Jsonl,
        }
    }
}

/// Which fields of the input hold the key and the payload.
#[derive(Debug, Clone)]
pub struct Fields {
    /// The key's field. Default value is `sample_id`.
    pub id: String,
    /// The payload's field. Default value is `payload`.
    pub payload: String,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            id: "sample_id".into(),
            payload: "payload".into(),
        }
    }
}

/// The longest id, in bytes of UTF-8. Ids are keys: they are matched, hashed and listed,
/// and one of megabytes is a mistake in the input, not a key.
pub const MAX_ID_LEN: usize = 1024;

/// The longest line of a JSON Lines input, in bytes: a longer one is an error, not an
/// allocation that takes the machine's memory (a file with no newline, `/dev/zero`).
pub const MAX_LINE_LEN: usize = 256 << 20;

/// The prefix of the ids given to invalid records (`invalid:<file>:<line>:<hash>`), which no
/// input's id may start with: an invalid record dead-lettered by one enqueue and a valid
/// record of another, enqueued at the same moment, could otherwise share an id and land in
/// two tables (their commits go to different tables, which Delta does not order).
pub const INVALID_ID_PREFIX: &str = "invalid:";

/// Whether `id` can be a record's key: not empty or blank (whitespace only), at most
/// [`MAX_ID_LEN`] bytes, free of control characters (C0 such as NUL, tab and newline,
/// DEL, and C1), and not starting with [`INVALID_ID_PREFIX`]. `field` names the id field in
/// the message.
pub fn check_id(id: &str, field: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err(format!("empty id field '{field}'"));
    }
    if id.starts_with(INVALID_ID_PREFIX) {
        return Err(format!(
            "id field '{field}' starts with '{INVALID_ID_PREFIX}', which is kept for the ids of invalid records"
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "id field '{field}' is {} bytes, longer than {MAX_ID_LEN} bytes",
            id.len()
        ));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "id field '{field}' holds a control character (U+{:04X}) at byte {at}",
            u32::from(c)
        ));
    }
    if id.trim().is_empty() {
        return Err(format!("id field '{field}' is blank (only whitespace)"));
    }
    Ok(())
}

/// A valid input record, borrowed from [`Records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRecord<'a> {
    /// Its line (JSON Lines, CSV) or row (Parquet), from 1.
    pub line: usize,
    /// Its key.
    pub sample_id: &'a str,
    /// Its payload: a string as is, any other JSON value as its JSON text.
    pub payload: Option<&'a str>,
}

/// The valid records of an input, stored by column: a few large buffers instead of two
/// allocations per record, so a million records take little more than their text. Past
/// [`SPILL_AT`] bytes of payloads, the payloads go on to an unnamed temporary file, so an
/// input of any size takes memory for its ids only; [`Records::window`] reads them back.
#[derive(Debug, Default)]
pub struct Records {
    lines: Vec<usize>,
    ids: String,
    id_ends: Vec<usize>,
    /// The payloads not spilled, from byte `spill.len` of all payloads on.
    payloads: String,
    /// Where each payload ends among all payloads.
    payload_ends: Vec<usize>,
    payload_missing: Vec<bool>,
    spill: Spill,
}

/// Bytes of payloads kept in memory before they are written to a temporary file.
pub const SPILL_AT: usize = 4 << 20;

/// The payloads written to a temporary file.
#[derive(Debug, Default)]
struct Spill {
    file: Option<std::fs::File>,
    /// Bytes written.
    len: usize,
    /// Why spilling failed, reported when the payloads are read back.
    failed: Option<String>,
}

impl Spill {
    /// Appends `text` to the file (created on first use).
    fn write(&mut self, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tempfile::tempfile()?),
        };
        file.write_all(text.as_bytes())?;
        self.len += text.len();
        Ok(())
    }
}

impl Records {
    /// Adds a record.
    pub fn push(&mut self, line: usize, sample_id: &str, payload: Option<&str>) {
        self.lines.push(line);
        self.ids.push_str(sample_id);
        self.id_ends.push(self.ids.len());
        self.payloads.push_str(payload.unwrap_or_default());
        self.payload_ends.push(self.spill.len + self.payloads.len());
        self.payload_missing.push(payload.is_none());
        if self.payloads.len() >= SPILL_AT && self.spill.failed.is_none() {
            match self.spill.write(&self.payloads) {
                Ok(()) => self.payloads.clear(),
                // Kept in memory: the input is still enqueued, in more memory.
                Err(e) => {
                    tracing::warn!(
                        "cannot set payloads aside in a temporary file ({e}); keeping them \
                         in memory (set TMPDIR to a writable directory with room)"
                    );
                    self.spill.failed = Some(e.to_string());
                }
            }
        }
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The line and id of the `i`-th record.
    pub fn id(&self, i: usize) -> (usize, &str) {
        let start = i.checked_sub(1).map_or(0, |j| self.id_ends[j]);
        (self.lines[i], &self.ids[start..self.id_ends[i]])
    }

    /// The lines and ids of the records, in input order.
    pub fn ids(&self) -> impl Iterator<Item = (usize, &str)> + Clone {
        (0..self.len()).map(|i| self.id(i))
    }

    /// Records `range`, their payloads read back from the temporary file when spilled.
    pub fn window(&self, range: std::ops::Range<usize>) -> std::io::Result<Window<'_>> {
        let start = |i: usize| i.checked_sub(1).map_or(0, |j| self.payload_ends[j]);
        let (from, to) = (start(range.start), start(range.end));
        let text = if from >= self.spill.len {
            std::borrow::Cow::Borrowed(&self.payloads[from - self.spill.len..to - self.spill.len])
        } else {
            let file = self.spill.file.as_ref().ok_or_else(|| {
                std::io::Error::other(self.spill.failed.clone().unwrap_or_default())
            })?;
            let mut bytes = vec![0; to - from];
            let on_file = self.spill.len.min(to) - from;
            std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes[..on_file], from as u64)?;
            bytes[on_file..].copy_from_slice(&self.payloads.as_bytes()[..to - from - on_file]);
            std::borrow::Cow::Owned(String::from_utf8(bytes).map_err(std::io::Error::other)?)
        };
        Ok(Window {
            records: self,
            range,
            from,
            text,
        })
    }

    /// The `i`-th record, its payload read back if spilled.
    #[cfg(test)]
    pub(crate) fn get(&self, i: usize) -> OwnedRecord {
        let window = self.window(i..i + 1).expect("readable");
        let r = window.get(i);
        OwnedRecord {
            line: r.line,
            sample_id: r.sample_id.to_owned(),
            payload: r.payload.map(str::to_owned),
        }
    }
}

/// A record of [`Records::get`].
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct OwnedRecord {
    pub line: usize,
    pub sample_id: String,
    pub payload: Option<String>,
}

/// Some consecutive records of a [`Records`], their payloads in memory.
#[derive(Debug)]
pub struct Window<'a> {
    records: &'a Records,
    range: std::ops::Range<usize>,
    /// Where the window's payloads start among all payloads.
    from: usize,
    text: std::borrow::Cow<'a, str>,
}

impl Window<'_> {
    /// The `i`-th record of the input, which must be in the window.
    pub fn get(&self, i: usize) -> InputRecord<'_> {
        assert!(
            self.range.contains(&i),
            "record {i} outside {:?}",
            self.range
        );
        let r = self.records;
        let start = i.checked_sub(1).map_or(0, |j| r.payload_ends[j]);
        let (line, sample_id) = r.id(i);
        InputRecord {
            line,
            sample_id,
            payload: (!r.payload_missing[i])
                .then(|| &self.text[start - self.from..r.payload_ends[i] - self.from]),
        }
    }
}

/// An input record that cannot be enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// Its line or row, from 1.
    pub line: usize,
    /// Its key, if one could be read.
    pub sample_id: Option<String>,
    /// The line as read (lossily decoded), kept so a dead letter loses nothing.
    pub raw: Option<String>,
    /// What is wrong with it.
    pub error: String,
    /// Where in its input it stood and what it held, byte for byte ([`fingerprint`]): its
    /// dead letter's id is made of it when it has no valid id of its own.
    pub fingerprint: u64,
}

/// An input file, split into valid and invalid records.
#[derive(Debug, Default)]
pub struct ParsedInput {
    /// Records that can be enqueued, in input order.
    pub records: Records,
    /// Records that cannot, in input order.
    pub invalid: Vec<InvalidRecord>,
}

/// Reads and validates a whole input file. A problem with the file itself (missing, no id
/// column) is an error; a problem with one record lands in [`ParsedInput::invalid`].
pub fn read_input(path: &Path, format: InputFormat, fields: &Fields) -> Result<ParsedInput> {
    let fail = |message: String| Error::InvalidInput {
        path: path.to_path_buf(),
        message,
    };
    match format {
        InputFormat::Jsonl => {
            let file = File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
            parse_jsonl_from(std::io::BufReader::with_capacity(1 << 20, file), fields)
                .map_err(|e| fail(format!("cannot read: {e}")))
        }
        InputFormat::Csv => {
            let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
            parse_csv(&bytes, fields).map_err(fail)
        }
        InputFormat::Parquet => {
            let file = File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
            parse_parquet(file, fields).map_err(fail)
        }
    }
}

/// Parses JSON Lines from a reader, a line at a time, so the input is never held whole: one
/// object per line; blank lines, a byte-order mark and CRLF endings are accepted.
pub fn parse_jsonl_from(reader: impl BufRead, fields: &Fields) -> std::io::Result<ParsedInput> {
    parse_jsonl_bounded(reader, fields, MAX_LINE_LEN)
}

/// [`parse_jsonl_from`], with lines of at most `max_line` bytes.
fn parse_jsonl_bounded(
    mut reader: impl BufRead,
    fields: &Fields,
    max_line: usize,
) -> std::io::Result<ParsedInput> {
    let mut parsed = ParsedInput::default();
    let mut buffer = Vec::new();
    for line_no in 1.. {
        buffer.clear();
        let limit = max_line as u64 + 1;
        if std::io::Read::take(&mut reader, limit).read_until(b'\n', &mut buffer)? == 0 {
            break;
        }
        if buffer.len() > max_line && buffer.last() != Some(&b'\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {line_no} is longer than {max_line} bytes"),
            ));
        }
        let mut line = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        if line_no == 1 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line, fields) {
            Ok((sample_id, payload)) => {
                parsed.records.push(line_no, &sample_id, payload.as_deref())
            }
            Err(error) => parsed.invalid.push(InvalidRecord {
                line: line_no,
                sample_id: None,
                raw: Some(String::from_utf8_lossy(line).into_owned()),
                error,
                fingerprint: fingerprint(line_no, &[line]),
            }),
        }
    }
    Ok(parsed)
}

/// The id and payload of one JSON Lines record, or what is wrong with it.
fn parse_line(
    line: &[u8],
    fields: &Fields,
) -> std::result::Result<(String, Option<String>), String> {
    let text = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_owned())?;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = LineSeed(fields)
        .deserialize(&mut de)
        .and_then(|l| de.end().map(|()| l))
        .map_err(|e| format!("malformed JSON: {e}"))?;
    let (id, payload) = match parsed {
        Line::Object { id, payload } => (id, payload),
        Line::Other(kind) => return Err(format!("expected a JSON object, found {kind}")),
    };
    let sample_id = id_from_json(id.as_ref(), &fields.id)?;
    // A payload that is not a string is kept as written: re-written from a parsed value, an
    // integer past 2^64 would become a float and a repeated key would vanish.
    let payload = match payload.map(RawValue::get) {
        None | Some("null") => None,
        Some(text) if text.starts_with('"') => {
            Some(serde_json::from_str::<String>(text).map_err(|e| format!("malformed JSON: {e}"))?)
        }
        Some(text) => Some(text.to_owned()),
    };
    Ok((sample_id, payload))
}

/// A JSON Lines record as far as enqueue needs it: the id and payload fields of an object
/// (every other field skipped unparsed), or the kind of a value that is not an object.
enum Line<'de> {
    Object {
        id: Option<Value>,
        payload: Option<&'de RawValue>,
    },
    Other(&'static str),
}

/// Which of the fields enqueue reads a key names.
enum Key {
    Id,
    Payload,
    Other,
}

/// Reads an object key as a [`Key`] without allocating it.
struct KeySeed<'a>(&'a Fields);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> std::result::Result<Key, E> {
        Ok(if key == self.0.id {
            Key::Id
        } else if key == self.0.payload {
            Key::Payload
        } else {
            Key::Other
        })
    }
}

/// Reads one [`Line`], picking the fields named in [`Fields`].
struct LineSeed<'a>(&'a Fields);

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Line<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Line<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = Line<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Line<'de>, A::Error> {
        let (mut id, mut payload) = (None, None);
        // The last of duplicate keys wins, as in a parsed JSON object.
        while let Some(key) = map.next_key_seed(KeySeed(self.0))? {
            match key {
                Key::Id => id = Some(map.next_value::<Value>()?),
                Key::Payload => payload = Some(map.next_value::<&'de RawValue>()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Line::Object { id, payload })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Line<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Line::Other("an array"))
    }

    fn visit_unit<E>(self) -> std::result::Result<Line<'de>, E> {
        Ok(Line::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Line<'de>, E> {
        Ok(Line::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<Line<'de>, E> {
        Ok(Line::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<Line<'de>, E> {
        Ok(Line::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<Line<'de>, E> {
        Ok(Line::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<Line<'de>, E> {
        Ok(Line::Other("a string"))
    }
}

/// What kind of JSON value this is, for an error naming it ("a number").
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn id_from_json(value: Option<&Value>, field: &str) -> std::result::Result<String, String> {
    let id = match value {
        None | Some(Value::Null) => return Err(format!("missing id field '{field}'")),
        Some(Value::String(s)) => s.clone(),
        // Past 2^53 a number read as a float is no longer exact: two ids would meet.
        Some(Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f.abs() >= 9_007_199_254_740_992.0)
                && n.is_f64() =>
        {
            return Err(format!(
                "id field '{field}' is a number too large to read exactly ({n}); give it as a string"
            ));
        }
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "id field '{field}' must be a string or a number, found {}",
                json_kind(other)
            ));
        }
    };
    check_id(&id, field)?;
    Ok(id)
}

/// Parses CSV with a header row naming the id and payload columns. Quoted fields may hold
/// newlines; the line reported is where the record starts.
pub fn parse_csv(input: &[u8], fields: &Fields) -> std::result::Result<ParsedInput, String> {
    // Line numbers from byte offsets: the reader's own line count lags behind CRLF endings.
    let newlines: Vec<usize> = input
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let line_at = |offset: u64| {
        let mut start = offset as usize;
        while input.get(start).is_some_and(|b| *b == b'\r' || *b == b'\n') {
            start += 1;
        }
        newlines.partition_point(|&n| n < start) + 1
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    let headers = reader
        .byte_headers()
        .map_err(|e| format!("cannot read the CSV header: {e}"))?
        .clone();
    let names: Vec<String> = headers
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .to_owned()
        })
        .collect();
    let find = |field: &str| {
        if names.iter().filter(|n| *n == field).count() > 1 {
            return Err(format!(
                "column '{field}' appears more than once in the CSV header"
            ));
        }
        names.iter().position(|n| n == field).ok_or_else(|| {
            format!(
                "no column '{field}' in the CSV header (columns: {})",
                names.join(", ")
            )
        })
    };
    let (id_at, payload_at) = (find(&fields.id)?, find(&fields.payload)?);
    let mut parsed = ParsedInput::default();
    let mut record = csv::ByteRecord::new();
    for ordinal in 1.. {
        let line = line_at(reader.position().byte());
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let error = format!("malformed CSV: {e}");
                parsed.invalid.push(InvalidRecord {
                    line,
                    sample_id: None,
                    raw: None,
                    fingerprint: fingerprint(ordinal, &[error.as_bytes()]),
                    error,
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        let raw = || {
            let fields: Vec<_> = record.iter().map(String::from_utf8_lossy).collect();
            Some(fields.join(","))
        };
        let held: Vec<&[u8]> = record.iter().collect();
        let fingerprint = fingerprint(ordinal, &held);
        if record.len() != names.len() {
            parsed.invalid.push(InvalidRecord {
                line,
                sample_id: None,
                raw: raw(),
                error: format!("expected {} fields, found {}", names.len(), record.len()),
                fingerprint,
            });
            continue;
        }
        let (Ok(id), Ok(payload)) = (
            std::str::from_utf8(&record[id_at]),
            std::str::from_utf8(&record[payload_at]),
        ) else {
            parsed.invalid.push(InvalidRecord {
                line,
                sample_id: None,
                raw: raw(),
                error: "not valid UTF-8".into(),
                fingerprint,
            });
            continue;
        };
        if let Err(error) = check_id(id, &fields.id) {
            parsed.invalid.push(InvalidRecord {
                line,
                sample_id: None,
                raw: raw(),
                error,
                fingerprint,
            });
            continue;
        }
        parsed.records.push(line, id, Some(payload));
    }
    Ok(parsed)
}

/// Parses Parquet: the id column may be any type that casts to a string, as may the
/// payload column; rows are numbered from 1.
pub fn parse_parquet(file: File, fields: &Fields) -> std::result::Result<ParsedInput, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let schema = builder.schema().clone();
    let reader = builder
        .build()
        .map_err(|e| format!("cannot read Parquet: {e}"))?;
    parse_batches(&schema, reader, fields)
}

/// Parses Arrow record batches of `schema` (a Parquet file's, a DataFrame's): the id
/// column may be any type that casts to a string, as may the payload column; rows are
/// numbered from 1.
pub fn parse_batches<E: std::fmt::Display>(
    schema: &Schema,
    batches: impl IntoIterator<Item = std::result::Result<RecordBatch, E>>,
    fields: &Fields,
) -> std::result::Result<ParsedInput, String> {
    let columns: HashMap<&str, &DataType> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    for (field, is_id) in [(&fields.id, true), (&fields.payload, false)] {
        // Two columns of one name: which one holds the records is anybody's guess.
        if schema.fields().iter().filter(|f| f.name() == field).count() > 1 {
            return Err(format!("column '{field}' appears more than once"));
        }
        match columns.get(field.as_str()) {
            None => {
                let names: Vec<&str> = columns.keys().copied().collect();
                return Err(format!(
                    "no column '{field}' in the schema (columns: {})",
                    names.join(", ")
                ));
            }
            Some(ty) if is_id && !(ty.is_integer() || is_string(ty)) => {
                return Err(format!(
                    "column '{field}' is {ty}; an id must be a string or an integer"
                ));
            }
            Some(ty) if !is_id && ty.is_nested() => {}
            Some(ty) if !deltalake::arrow::compute::can_cast_types(ty, &DataType::Utf8) => {
                return Err(format!(
                    "column '{field}' is {ty}, which cannot be read as a string"
                ));
            }
            Some(_) => {}
        }
    }
    let mut parsed = ParsedInput::default();
    let mut row = 0usize;
    for batch in batches {
        let batch = batch.map_err(|e| format!("cannot read after row {row}: {e}"))?;
        let as_strings = |name: &str| -> std::result::Result<StringArray, String> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column '{name}' in the batch after row {row}"))?;
            if column.data_type().is_nested() {
                return json_texts(column)
                    .map_err(|e| format!("column '{name}' after row {row}: {e}"));
            }
            if let Some(texts) = utf8_texts(column) {
                return texts
                    .map_err(|i| format!("column '{name}' row {}: not valid UTF-8", row + i + 1));
            }
            // Not the safe cast, which turns what it cannot read (bytes that are not
            // UTF-8) into nulls: a payload would be lost without a word.
            let options = CastOptions {
                safe: false,
                ..CastOptions::default()
            };
            let utf8 = cast_with_options(column, &DataType::Utf8, &options)
                .map_err(|e| format!("column '{name}' after row {row}: {e}"))?;
            Ok(utf8
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let (ids, payloads) = (as_strings(&fields.id)?, as_strings(&fields.payload)?);
        for i in 0..batch.num_rows() {
            row += 1;
            let payload = payloads.is_valid(i).then(|| payloads.value(i));
            let checked = if ids.is_null(i) {
                Err(format!("missing id field '{}'", fields.id))
            } else {
                check_id(ids.value(i), &fields.id)
            };
            if let Err(error) = checked {
                let id = ids.is_valid(i).then(|| ids.value(i));
                let held = [id, payload].map(|v| v.map_or(&[0xff][..], str::as_bytes));
                parsed.invalid.push(InvalidRecord {
                    line: row,
                    sample_id: None,
                    raw: payload.map(str::to_owned),
                    error,
                    fingerprint: fingerprint(row, &held),
                });
                continue;
            }
            parsed.records.push(row, ids.value(i), payload);
        }
    }
    Ok(parsed)
}

/// Each value of a nested column (lists, structs, maps) as its JSON text, as a JSON Lines
/// input stores a nested payload.
fn json_texts(column: &ArrayRef) -> std::result::Result<StringArray, String> {
    // Arrow's JSON writer would write them as null: data changed without a word.
    if has_non_finite(column) {
        return Err("holds NaN or an infinity, which JSON has no text for".into());
    }
    let batch = RecordBatch::try_from_iter([("v", column.clone())]).map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    // Null fields kept, as a dict's JSON text keeps them.
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(&mut lines);
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    // Each line is `{"v":<value>}`: the value is taken as the writer wrote it (parsed and
    // written again, a decimal's digits or a repeated key would be lost).
    let mut texts = StringBuilder::new();
    for line in lines.split(|&b| b == b'\n').take(batch.num_rows()) {
        let value = line
            .strip_prefix(b"{\"v\":")
            .and_then(|rest| rest.strip_suffix(b"}"))
            .ok_or("the JSON writer wrote an unexpected line")?;
        match std::str::from_utf8(value).map_err(|e| e.to_string())? {
            "null" => texts.append_null(),
            value => texts.append_value(value),
        }
    }
    Ok(texts.finish())
}

/// Each value of a binary column as UTF-8 text, or the index of the first that is not
/// UTF-8; `None` for other columns. Value by value: a cast would judge the whole buffer,
/// bytes outside a slice included.
fn utf8_texts(column: &ArrayRef) -> Option<std::result::Result<StringArray, usize>> {
    use deltalake::arrow::array::AsArray;
    let values: Box<dyn Iterator<Item = Option<&[u8]>>> = match column.data_type() {
        DataType::Binary => Box::new(column.as_binary::<i32>().iter()),
        DataType::LargeBinary => Box::new(column.as_binary::<i64>().iter()),
        DataType::BinaryView => Box::new(column.as_binary_view().iter()),
        DataType::FixedSizeBinary(_) => Box::new(column.as_fixed_size_binary().iter()),
        _ => return None,
    };
    Some(
        values
            .enumerate()
            .map(|(i, v)| v.map(|b| std::str::from_utf8(b).map_err(|_| i)).transpose())
            .collect(),
    )
}

/// Whether a float some row of `array` holds, at any depth, is NaN or infinite. What no
/// row holds (under a null, outside a slice, an unused dictionary value) does not count.
fn has_non_finite(array: &dyn Array) -> bool {
    use deltalake::arrow::array::{AsArray, BooleanArray, OffsetSizeTrait};
    use deltalake::arrow::datatypes::{Float16Type, Float32Type, Float64Type};
    fn lists<O: OffsetSizeTrait>(l: &deltalake::arrow::array::GenericListArray<O>) -> bool {
        if l.null_count() == 0 {
            let offsets = l.value_offsets();
            let (start, end) = (offsets[0].as_usize(), offsets[l.len()].as_usize());
            return has_non_finite(&l.values().slice(start, end - start));
        }
        (0..l.len()).any(|i| l.is_valid(i) && has_non_finite(&l.value(i)))
    }
    match array.data_type() {
        DataType::Float16 => array
            .as_primitive::<Float16Type>()
            .iter()
            .any(|v| v.is_some_and(|v| !v.is_finite())),
        DataType::Float32 => array
            .as_primitive::<Float32Type>()
            .iter()
            .any(|v| v.is_some_and(|v| !v.is_finite())),
        DataType::Float64 => array
            .as_primitive::<Float64Type>()
            .iter()
            .any(|v| v.is_some_and(|v| !v.is_finite())),
        DataType::Struct(_) => {
            let s = array.as_struct();
            let held = s
                .nulls()
                .filter(|n| n.null_count() > 0)
                .map(|n| BooleanArray::new(n.inner().clone(), None));
            s.columns().iter().any(|c| match &held {
                None => has_non_finite(c),
                // A filter that fails keeps the question open: refuse.
                Some(held) => {
                    deltalake::arrow::compute::filter(c, held).map_or(true, |c| has_non_finite(&c))
                }
            })
        }
        DataType::List(_) => lists(array.as_list::<i32>()),
        DataType::LargeList(_) => lists(array.as_list::<i64>()),
        DataType::FixedSizeList(..) => {
            let l = array.as_fixed_size_list();
            (0..l.len()).any(|i| l.is_valid(i) && has_non_finite(&l.value(i)))
        }
        DataType::Map(..) => {
            let m = array.as_map();
            (0..m.len()).any(|i| m.is_valid(i) && has_non_finite(&m.value(i)))
        }
        DataType::Dictionary(_, values) => {
            deltalake::arrow::compute::cast(array, values).map_or(true, |v| has_non_finite(&v))
        }
        _ => false,
    }
}

fn is_string(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The id of an invalid record without a valid one of its own: where it came from (the
/// input's name, its line) and its [`InvalidRecord::fingerprint`]. Enqueueing one input
/// twice gives the same ids (the second finds them known); two records of one input, or
/// of two inputs of one name, that differ in place or in any byte get different ones, so
/// neither is taken for the other and lost.
pub fn synthetic_id(path: &Path, invalid: &InvalidRecord) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(path).display().to_string());
    format!(
        "{INVALID_ID_PREFIX}{name}:{}:{:016x}",
        invalid.line, invalid.fingerprint
    )
}

/// A record's place in its input (`ordinal`, counted from 1: its line, record or row)
/// and its parts (the line, the CSV fields, the id and payload), hashed unambiguously
/// (each part's length first) with 64-bit FNV-1a, the same in every process and build.
pub fn fingerprint(ordinal: usize, parts: &[&[u8]]) -> u64 {
    let mut hash = Fnv1a::default();
    hash.write(&(ordinal as u64).to_le_bytes());
    for part in parts {
        hash.write(&(part.len() as u64).to_le_bytes());
        hash.write(part);
    }
    hash.0
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_jsonl(bytes: &[u8], fields: &Fields) -> ParsedInput {
        parse_jsonl_from(bytes, fields).expect("reading from memory cannot fail")
    }

    #[test]
    fn a_line_past_the_limit_is_an_error_naming_it() {
        let input = b"{\"sample_id\":\"a\"}\n{\"sample_id\":\"b\",\"payload\":\"xxxxxxxxxx\"}\n";
        let err = parse_jsonl_bounded(&input[..], &Fields::default(), 39).unwrap_err();
        assert_eq!(err.to_string(), "line 2 is longer than 39 bytes");
        // At the limit (40 bytes and its newline) it is read.
        let parsed = parse_jsonl_bounded(&input[..], &Fields::default(), 40).unwrap();
        assert_eq!(parsed.records.len(), 2);
    }

    #[test]
    fn invalid_records_ids_follow_their_place_and_bytes() {
        let id = |path: &str, ordinal: usize, parts: &[&[u8]]| {
            let invalid = InvalidRecord {
                line: 3,
                sample_id: None,
                raw: None,
                error: String::new(),
                fingerprint: fingerprint(ordinal, parts),
            };
            synthetic_id(Path::new(path), &invalid)
        };
        let a = id("/day1/in.jsonl", 3, &[b"not json"]);
        assert!(a.starts_with("invalid:in.jsonl:3:"), "{a}");
        assert_eq!(a, id("/day1/in.jsonl", 3, &[b"not json"]));
        assert_ne!(a, id("/day2/in.jsonl", 3, &[b"not json either"]));
        assert_ne!(a, id("/day1/in.jsonl", 4, &[b"not json"]));
        // Parts are told apart however their bytes run together.
        assert_ne!(
            fingerprint(1, &[b"x", b"y,z"]),
            fingerprint(1, &[b"x,y", b"z"])
        );
        // FNV-1a's published value: the same in every build.
        let mut h = Fnv1a::default();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn arrow_columns_named_twice_are_refused() {
        use deltalake::arrow::datatypes::Field;
        let schema = Schema::new(vec![
            Field::new("sample_id", DataType::Utf8, true),
            Field::new("payload", DataType::Utf8, true),
            Field::new("sample_id", DataType::Float64, true),
        ]);
        let none: Vec<std::result::Result<RecordBatch, String>> = Vec::new();
        let err = parse_batches(&schema, none, &Fields::default()).unwrap_err();
        assert_eq!(err, "column 'sample_id' appears more than once");
    }

    #[test]
    fn nested_arrow_payloads_keep_their_null_fields() {
        let rows = r#"{"sample_id":"a","payload":{"x":1,"y":null}}"#;
        let schema = std::sync::Arc::new(Schema::new(vec![
            deltalake::arrow::datatypes::Field::new("sample_id", DataType::Utf8, false),
            deltalake::arrow::datatypes::Field::new(
                "payload",
                DataType::Struct(
                    vec![
                        deltalake::arrow::datatypes::Field::new("x", DataType::Int64, true),
                        deltalake::arrow::datatypes::Field::new("y", DataType::Int64, true),
                    ]
                    .into(),
                ),
                true,
            ),
        ]));
        let batches = deltalake::arrow::json::ReaderBuilder::new(schema.clone())
            .build(rows.as_bytes())
            .unwrap();
        let parsed = parse_batches(&schema, batches, &Fields::default()).unwrap();
        assert_eq!(
            parsed.records.get(0).payload.as_deref(),
            Some(r#"{"x":1,"y":null}"#)
        );
    }

    #[test]
    fn jsonl_accepts_bom_crlf_blank_lines_and_nested_payloads() {
        let input = b"\xEF\xBB\xBF{\"sample_id\":\"S-1\",\"payload\":\"a\"}\r\n\n  \n{\"sample_id\":7,\"payload\":{\"k\":[1,2]}}\n";
        let parsed = parse_jsonl(input, &Fields::default());
        assert!(parsed.invalid.is_empty(), "{:?}", parsed.invalid);
        assert_eq!(parsed.records.get(0).sample_id, "S-1");
        assert_eq!(parsed.records.get(0).payload.as_deref(), Some("a"));
        assert_eq!(parsed.records.get(1).line, 4);
        assert_eq!(parsed.records.get(1).sample_id, "7");
        assert_eq!(
            parsed.records.get(1).payload.as_deref(),
            Some("{\"k\":[1,2]}")
        );
    }

    #[test]
    fn jsonl_reports_bad_lines_by_number() {
        let input = b"{\"sample_id\":\"a\"}\n{oops\n[1]\n{\"payload\":\"x\"}\n\xff\xfe\n";
        let parsed = parse_jsonl(input, &Fields::default());
        let lines: Vec<usize> = parsed.invalid.iter().map(|i| i.line).collect();
        assert_eq!(lines, [2, 3, 4, 5]);
        assert!(parsed.invalid[0].error.starts_with("malformed JSON"));
        assert!(parsed.invalid[1].error.contains("found an array"));
        assert!(
            parsed.invalid[2]
                .error
                .contains("missing id field 'sample_id'")
        );
        assert_eq!(parsed.invalid[3].error, "not valid UTF-8");
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.records.get(0).payload.as_deref(), None);
    }

    #[test]
    fn csv_handles_quoted_newlines_and_missing_columns() {
        let input = "sample_id,payload\nS-1,\"two\nlines\"\nS-2,plain\n,no id\n";
        let parsed = parse_csv(input.as_bytes(), &Fields::default()).unwrap();
        let crlf = parse_csv(input.replace('\n', "\r\n").as_bytes(), &Fields::default()).unwrap();
        let lines = |p: &ParsedInput| {
            (
                p.records.ids().map(|(line, _)| line).collect::<Vec<_>>(),
                p.invalid[0].line,
            )
        };
        assert_eq!(lines(&parsed), lines(&crlf));
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(parsed.records.get(0).payload.as_deref(), Some("two\nlines"));
        assert_eq!(parsed.records.get(1).line, 4);
        assert_eq!(parsed.invalid[0].line, 5);
        let fields = Fields {
            id: "id".into(),
            ..Fields::default()
        };
        let err = parse_csv(input.as_bytes(), &fields).unwrap_err();
        assert!(err.contains("no column 'id'"), "{err}");
    }

    #[test]
    fn ids_are_checked_for_length_control_characters_and_blanks() {
        let ok = |id: &str| check_id(id, "sample_id").is_ok();
        assert!(ok("S-1") && ok(" padded ") && ok("émoji-🧪") && ok(&"x".repeat(MAX_ID_LEN)));
        let err = |id: &str| check_id(id, "sample_id").unwrap_err();
        assert_eq!(err(""), "empty id field 'sample_id'");
        assert!(err(&"x".repeat(MAX_ID_LEN + 1)).contains("1025 bytes, longer than 1024"));
        // A multi-byte character counts its bytes.
        assert!(err(&"é".repeat(513)).contains("1026 bytes"));
        for c in [
            '\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}',
        ] {
            let message = err(&format!("a{c}b"));
            assert!(
                message.contains(&format!("(U+{:04X}) at byte 1", u32::from(c))),
                "{message}"
            );
        }
        for blank in [" ", "  ", "\u{3000}", "\u{a0} \u{2003}"] {
            assert!(err(blank).contains("is blank"), "{blank:?}");
        }
    }

    #[test]
    fn payloads_past_the_spill_threshold_are_read_back_whole_across_the_boundary() {
        let mut records = Records::default();
        let payload = |i: usize| format!("payload {i} {}", "é".repeat(i % 97));
        let mut n = 0;
        while records.spill.len + records.payloads.len() < SPILL_AT + (SPILL_AT / 2) {
            let p = payload(n);
            records.push(n + 1, &format!("S-{n}"), (n % 5 != 0).then_some(p.as_str()));
            n += 1;
        }
        assert!(
            records.spill.len >= SPILL_AT,
            "spilled {}",
            records.spill.len
        );
        assert!(
            records.payloads.len() < SPILL_AT,
            "kept {}",
            records.payloads.len()
        );
        // Every record, one at a time and in windows that straddle the spill's end.
        for i in (0..n).step_by(997).chain(n - 3..n) {
            let r = records.get(i);
            assert_eq!(
                (r.line, r.sample_id.as_str()),
                (i + 1, format!("S-{i}").as_str())
            );
            assert_eq!(r.payload, (i % 5 != 0).then(|| payload(i)));
        }
        let window = records.window(0..n).unwrap();
        for i in 0..n {
            let expected = payload(i);
            assert_eq!(
                window.get(i).payload,
                (i % 5 != 0).then_some(expected.as_str())
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let jsonl = parse_jsonl(&bytes, &Fields::default());
            // Every non-blank line is accounted for, as a record or as invalid.
            let lines = bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
            let bom = usize::from(bytes.starts_with(b"\xEF\xBB\xBF") && bytes[3..].split(|&b| b == b'\n').next().is_some_and(|l| l.iter().all(u8::is_ascii_whitespace)));
            proptest::prop_assert_eq!(jsonl.records.len() + jsonl.invalid.len() + bom, lines);
            let _ = parse_csv(&bytes, &Fields::default());
        }

        #[test]
        fn parsers_never_panic_on_json_like_text(text in r#"(\{"sample_id":("[a-z\\"]{0,5}"|[0-9]{1,3}|null|\[\]),"payload":("[^"]{0,8}"|\{\}|[0-9.e-]{1,6}|true)\}\r?\n?){0,6}"#) {
            let parsed = parse_jsonl(text.as_bytes(), &Fields::default());
            for (_, id) in parsed.records.ids() {
                proptest::prop_assert!(!id.is_empty());
            }
            let _ = parse_csv(text.as_bytes(), &Fields::default());
        }
    }
}
