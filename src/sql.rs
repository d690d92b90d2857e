//! The Delta forms of Spark SQL that DataFusion does not parse, rewritten into plain SQL
//! over tables the catalog ([`crate::catalog`]) resolves: time travel after any table
//! reference (`retry_queue VERSION AS OF 12`, `TIMESTAMP AS OF '2025-11-24 14:00:00'`),
//! `DESCRIBE HISTORY t [LIMIT n]` and `DESCRIBE DETAIL t`. Tables by path
//! (`` delta.`/mnt/delta/retry_queue` ``) need no rewrite: the catalog's `delta` schema
//! resolves them. Also splits a script into statements, for the SQL shell.
//!
//! The rewrite works on the tokens of DataFusion's own tokenizer and splices the original
//! text, so strings, comments and quoted names pass through untouched.

use chrono::{DateTime, NaiveDate, Utc};
use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
use deltalake::datafusion::sql::sqlparser::keywords::Keyword;
use deltalake::datafusion::sql::sqlparser::tokenizer::{
    Location, Span, Token, TokenWithSpan, Tokenizer, Word,
};

use crate::error::{Error, Result};
use crate::store::Table;

/// What a table reference names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableName {
    /// One of the queue's four tables.
    Queue(Table),
    /// Any Delta table, by path or URL (`` delta.`s3://bucket/t` ``).
    Path(String),
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableName::Queue(table) => f.write_str(table.name()),
            TableName::Path(path) => write!(f, "delta.`{path}`"),
        }
    }
}

/// Which version of a table a reference reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Travel {
    /// `VERSION AS OF n`.
    Version(u64),
    /// `TIMESTAMP AS OF 'ts'`: the latest version committed at or before it.
    Time(DateTime<Utc>),
    /// `TIMESTAMP AS OF <expression>` (`current_timestamp() - INTERVAL 1 HOUR`,
    /// `date_sub(current_date(), 1)`): SQL whose value is the time, evaluated as the query
    /// is planned.
    Expression(String),
}

/// A table the rewritten SQL reads under a name of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A table at a version.
    Table(TableName, Travel),
    /// `DESCRIBE HISTORY`: one row per commit, newest first.
    History(TableName),
    /// `DESCRIBE DETAIL`: one row about the table.
    Detail(TableName),
}

/// SQL DataFusion can plan, and the tables it reads under the names given them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The statement.
    pub sql: String,
    /// Each name the statement reads (a quoted identifier in `sql`) and what it is.
    pub sources: Vec<(String, Source)>,
    /// The statement as written.
    original: String,
    /// Each replacement: its bytes in `original`, then in `sql`.
    splices: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

/// Rewrites the Delta forms in one statement (see the module doc); any other SQL is
/// returned as it is.
pub fn rewrite(sql: &str) -> Result<Rewritten> {
    let (tokens, starts) = tokens(sql)?;
    // Significant tokens: no whitespace or comments.
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let at = |k: usize| sig.get(k).map(|&i| &tokens[i].token);
    let start = |k: usize| starts[sig[k]];
    let end = |k: usize| starts[sig[k] + 1];
    let place = |k: usize| location(&tokens[sig[k]]);

    let mut rewritten = Rewritten {
        sql: String::new(),
        sources: Vec::new(),
        original: sql.to_owned(),
        splices: Vec::new(),
    };
    // Byte ranges of `sql` and their replacements, in order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut k = 0;
    while k < sig.len() {
        // DESCRIBE HISTORY t / DESCRIBE DETAIL t
        if is_keyword(at(k), &[Keyword::DESCRIBE, Keyword::DESC])
            && let Some(kind) = at(k + 1).and_then(|t| match t {
                Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::HISTORY => {
                    Some("HISTORY")
                }
                Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::DETAIL => {
                    Some("DETAIL")
                }
                _ => None,
            })
        {
            let Some((name, last)) = reference(&at, k + 2)? else {
                return Err(syntax(format!(
                    "DESCRIBE {kind} takes a table: retry_queue, final_results, \
                     dead_letter_queue, attempts or delta.`path` ({})",
                    place(k)
                )));
            };
            if let Some(clause) = temporal(&at, last + 1) {
                return Err(syntax(format!(
                    "DESCRIBE {kind} takes a table, not a version of it ({}): drop {clause} AS OF",
                    place(last + 1)
                )));
            }
            let source = match kind {
                "HISTORY" => Source::History(name.clone()),
                _ => Source::Detail(name.clone()),
            };
            let label = format!("DESCRIBE {kind} {name}");
            edits.push((
                start(k),
                end(last),
                format!("SELECT * FROM {}", quote(&label)),
            ));
            rewritten.add(label, source);
            k = last + 1;
            continue;
        }
        // t [FOR] VERSION AS OF n / t [FOR] TIMESTAMP AS OF 'ts', after a name (not after
        // a keyword or `::`: `SELECT version AS of`, `x::timestamp AS of` are aliases)
        if let Some(clause) = temporal(&at, k).filter(|_| {
            k > 0
                && matches!(at(k - 1), Some(Token::Word(w))
                    if w.quote_style.is_some() || w.keyword == Keyword::NoKeyword)
        }) {
            let clause_start = k;
            let for_ = is_keyword(at(k), &[Keyword::FOR]) as usize;
            let value = k + for_ + 3;
            // The reference ends just before the clause: walk back over `a.b.c`.
            let mut first = k;
            if k > 0 && matches!(at(k - 1), Some(Token::Word(_))) {
                first = k - 1;
                while first >= 2
                    && matches!(at(first - 1), Some(Token::Period))
                    && matches!(at(first - 2), Some(Token::Word(_)))
                {
                    first -= 2;
                }
            }
            let found = (first < k)
                .then(|| reference(&at, first))
                .transpose()?
                .flatten();
            let name = match found {
                Some((name, last)) if last + 1 == clause_start => name,
                _ => {
                    return Err(syntax(format!(
                        "{clause} AS OF follows a table: retry_queue, final_results, \
                         dead_letter_queue, attempts or delta.`path` ({})",
                        place(k)
                    )));
                }
            };
            if edits.last().is_some_and(|e| e.1 > start(first)) {
                return Err(syntax(format!(
                    "{clause} AS OF cannot follow DESCRIBE ({})",
                    place(k)
                )));
            }
            // A time may be an expression (`current_timestamp() - INTERVAL 1 HOUR`),
            // evaluated before the query runs ([`Travel::Expression`]).
            let mut value = value;
            let travel = match expression(&at, value).filter(|&e| {
                clause == "TIMESTAMP"
                    && (e > value || !matches!(at(value), Some(Token::SingleQuotedString(_))))
            }) {
                Some(last) => {
                    let text = sql[start(value)..end(last)].trim().to_owned();
                    value = last;
                    Travel::Expression(text)
                }
                None => travel(clause, at(value)).map_err(|why| {
                    syntax(format!(
                        "{name} {clause} AS OF: {why} ({})",
                        place(value.min(sig.len() - 1))
                    ))
                })?,
            };
            let label = match &travel {
                Travel::Version(v) => format!("{name} VERSION AS OF {v}"),
                Travel::Time(t) => format!(
                    "{name} TIMESTAMP AS OF {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
                Travel::Expression(e) => format!("{name} TIMESTAMP AS OF {e}"),
            };
            let mut text = quote(&label);
            // Keep the table's own name as the qualifier its columns are known by, unless
            // the query gives it an alias.
            if let TableName::Queue(table) = &name
                && !is_alias(at(value + 1))
            {
                text.push_str(" AS ");
                text.push_str(table.name());
            }
            edits.push((start(first), end(value), text));
            rewritten.add(label, Source::Table(name, travel));
            k = value + 1;
            continue;
        }
        k += 1;
    }
    let mut from = 0;
    for (start, end, text) in edits {
        rewritten.sql.push_str(&sql[from..start]);
        let at = rewritten.sql.len();
        rewritten.sql.push_str(&text);
        rewritten
            .splices
            .push((start..end, at..rewritten.sql.len()));
        from = end;
    }
    rewritten.sql.push_str(&sql[from..]);
    Ok(rewritten)
}

impl Rewritten {
    /// `message` (a parser error about `sql`) with each `Line: L, Column: C` moved to the
    /// same place in the statement as written.
    pub fn locate(&self, message: &str) -> String {
        if self.splices.is_empty() {
            return message.to_owned();
        }
        let pattern = regex::Regex::new(r"Line: (\d+), Column: (\d+)").expect("a valid pattern");
        pattern
            .replace_all(message, |c: &regex::Captures| {
                let (line, column) = (c[1].parse().unwrap_or(0), c[2].parse().unwrap_or(0));
                let at = offset(&self.sql, line, column);
                // The last replacement that starts before it: inside it, its start as written;
                // after it, the same distance after its end as written.
                let original = match self.splices.iter().rev().find(|(_, new)| new.start <= at) {
                    Some((old, new)) if at < new.end => old.start,
                    Some((old, new)) => old.end + (at - new.end),
                    None => at,
                };
                let (line, column) = line_column(&self.original, original);
                format!("Line: {line}, Column: {column}")
            })
            .into_owned()
    }

    fn add(&mut self, name: String, source: Source) {
        if !self.sources.iter().any(|(n, _)| *n == name) {
            self.sources.push((name, source));
        }
    }
}

/// One statement of a script, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text, without its `;`.
    pub sql: String,
    /// The line of the script it starts on.
    pub line: usize,
}

/// Splits a script into its statements at each `;` outside strings, quoted names and
/// comments; statements holding only whitespace and comments are left out.
pub fn statements(script: &str) -> Result<Vec<Statement>> {
    let (tokens, starts) = tokens(script)?;
    let mut out = Vec::new();
    let mut begin = 0;
    let mut first: Option<usize> = None;
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::SemiColon => {
                if let Some(f) = first.take() {
                    out.push(Statement {
                        sql: script[begin..starts[i]].trim().to_owned(),
                        line: tokens[f].span.start.line as usize,
                    });
                }
                begin = starts[i + 1];
            }
            Token::Whitespace(_) => {}
            _ => {
                first.get_or_insert(i);
            }
        }
    }
    if let Some(f) = first {
        out.push(Statement {
            sql: script[begin..].trim().to_owned(),
            line: tokens[f].span.start.line as usize,
        });
    }
    Ok(out)
}

/// Whether `text` ends a statement: it holds SQL and its last token outside strings and
/// comments is `;`. An unterminated string or comment is not an end (the shell reads on).
pub fn is_complete(text: &str) -> bool {
    match tokens(text) {
        Ok((tokens, _)) => tokens
            .iter()
            .rev()
            .find(|t| !matches!(t.token, Token::Whitespace(_)))
            .is_some_and(|t| t.token == Token::SemiColon),
        Err(_) => false,
    }
}

/// Parses a time as `TIMESTAMP AS OF` and `--as-of` take it: RFC 3339
/// (`2025-11-24T14:00:00Z`), or without an offset in UTC (`2025-11-24 14:00:00`,
/// `2025-11-24T14:00:00.5`), or a date (`2025-11-24`, its midnight UTC).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Some(t.into());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// The tokens of `sql` and the byte offset where each starts, with `sql.len()` after the
/// last: token `i` is `sql[starts[i]..starts[i + 1]]`.
fn tokens(sql: &str) -> Result<(Vec<TokenWithSpan>, Vec<usize>)> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| syntax(e.to_string()))?;
    // The tokenizer turns a `/*! ... */` comment into the tokens inside it, placed from the
    // comment's start on: they no longer tile the text, which could then not be spliced
    // (and DataFusion would run the comment as SQL).
    let (lines, columns) = line_column(sql, sql.len());
    let at_end = Location::new(lines as u64, columns as u64);
    let end = TokenWithSpan::new(Token::EOF, Span::new(at_end, at_end));
    for pair in tokens.iter().chain([&end]).collect::<Vec<_>>().windows(2) {
        if pair[0].span.end != pair[1].span.start {
            return Err(syntax(format!(
                "/*! ... */ optimizer hints are not supported (near {}): write /* ... */ \
                 for a comment",
                location(pair[0])
            )));
        }
    }
    let starts = byte_starts(sql, &tokens);
    Ok((tokens, starts))
}

/// Each token's byte offset in `sql` (from its line and column, counted in chars), and
/// `sql.len()` after the last; one pass over the text.
fn byte_starts(sql: &str, tokens: &[TokenWithSpan]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(tokens.len() + 1);
    let (mut line, mut column, mut byte) = (1u64, 1u64, 0usize);
    let mut chars = sql.char_indices().peekable();
    for t in tokens {
        let target = (t.span.start.line, t.span.start.column);
        if target < (line, column) {
            // Not in order (never seen): count again from the start.
            (line, column, byte) = (1, 1, 0);
            chars = sql.char_indices().peekable();
        }
        while (line, column) < target {
            let Some((_, c)) = chars.next() else { break };
            byte += c.len_utf8();
            if c == '\n' {
                (line, column) = (line + 1, 1);
            } else {
                column += 1;
            }
        }
        starts.push(byte.min(sql.len()));
    }
    starts.push(sql.len());
    starts
}

/// The byte offset of 1-based `line` and `column` (in chars) in `text`.
fn offset(text: &str, line: usize, column: usize) -> usize {
    let line_start = match line {
        0 | 1 => 0,
        n => text
            .match_indices('\n')
            .nth(n - 2)
            .map_or(text.len(), |(i, _)| i + 1),
    };
    text[line_start..]
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(text.len(), |(i, _)| line_start + i)
}

/// The 1-based line and column (in chars) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn location(t: &TokenWithSpan) -> String {
    format!("line {}, column {}", t.span.start.line, t.span.start.column)
}

fn syntax(message: String) -> Error {
    Error::Sql(message)
}

fn is_keyword(token: Option<&Token>, keywords: &[Keyword]) -> bool {
    matches!(token, Some(Token::Word(w)) if w.quote_style.is_none() && keywords.contains(&w.keyword))
}

/// The clause (`VERSION` or `TIMESTAMP`) when a temporal clause starts at `k`:
/// `[FOR] VERSION|SYSTEM_VERSION|TIMESTAMP|SYSTEM_TIME AS OF`.
fn temporal<'a>(at: &impl Fn(usize) -> Option<&'a Token>, k: usize) -> Option<&'static str> {
    let k = k + is_keyword(at(k), &[Keyword::FOR]) as usize;
    let clause = match at(k) {
        Some(Token::Word(w)) if w.quote_style.is_none() => {
            match w.value.to_ascii_uppercase().as_str() {
                "VERSION" | "SYSTEM_VERSION" => "VERSION",
                "TIMESTAMP" | "SYSTEM_TIME" => "TIMESTAMP",
                _ => return None,
            }
        }
        _ => return None,
    };
    (is_keyword(at(k + 1), &[Keyword::AS]) && is_keyword(at(k + 2), &[Keyword::OF]))
        .then_some(clause)
}

/// The last token of a time expression starting at `k`: operands (a literal, `INTERVAL
/// '1' HOUR`, `TIMESTAMP '...'`, a function call, a parenthesised expression,
/// `CURRENT_TIMESTAMP`) joined by
/// `+` or `-`. `None` when no operand starts at `k`.
fn expression<'a>(at: &impl Fn(usize) -> Option<&'a Token>, k: usize) -> Option<usize> {
    let mut last = operand(at, k)?;
    while matches!(at(last + 1), Some(Token::Plus | Token::Minus)) {
        last = operand(at, last + 2)?;
    }
    Some(last)
}

fn operand<'a>(at: &impl Fn(usize) -> Option<&'a Token>, k: usize) -> Option<usize> {
    const UNITS: [&str; 9] = [
        "YEAR",
        "MONTH",
        "WEEK",
        "DAY",
        "HOUR",
        "MINUTE",
        "SECOND",
        "MILLISECOND",
        "MICROSECOND",
    ];
    match at(k)? {
        Token::SingleQuotedString(_) | Token::Number(..) => Some(k),
        Token::LParen => closing(at, k),
        Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::INTERVAL => {
            if !matches!(
                at(k + 1),
                Some(Token::SingleQuotedString(_) | Token::Number(..))
            ) {
                return None;
            }
            let unit = |t: Option<&Token>| {
                matches!(t, Some(Token::Word(u)) if u.quote_style.is_none()
                    && UNITS.contains(&u.value.to_ascii_uppercase().trim_end_matches('S')))
            };
            Some(if unit(at(k + 2)) { k + 2 } else { k + 1 })
        }
        Token::Word(w) if w.quote_style.is_none() => match at(k + 1) {
            Some(Token::LParen) => closing(at, k + 1),
            // A typed literal: TIMESTAMP '2025-11-24 14:00:00', DATE '2025-11-24'.
            Some(Token::SingleQuotedString(_))
                if matches!(w.keyword, Keyword::TIMESTAMP | Keyword::DATE) =>
            {
                Some(k + 1)
            }
            _ => matches!(
                w.keyword,
                Keyword::CURRENT_TIMESTAMP | Keyword::CURRENT_DATE
            )
            .then_some(k),
        },
        _ => None,
    }
}

/// The `)` closing the `(` at `k`.
fn closing<'a>(at: &impl Fn(usize) -> Option<&'a Token>, k: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = k;
    loop {
        match at(i)? {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The version or time after `AS OF`.
fn travel(clause: &str, value: Option<&Token>) -> std::result::Result<Travel, String> {
    let text = match value {
        Some(Token::Number(n, _)) => n.as_str(),
        Some(Token::SingleQuotedString(s)) => s.as_str(),
        Some(other) => {
            return Err(format!(
                "expected {}, found {other}",
                if clause == "VERSION" {
                    "a version number"
                } else {
                    "a quoted time such as '2025-11-24 14:00:00' (UTC)"
                }
            ));
        }
        None => return Err("the statement ends before the version".to_owned()),
    };
    if clause == "VERSION" {
        text.trim()
            .parse::<u64>()
            .map(Travel::Version)
            .map_err(|_| format!("'{text}' is not a version number (0, 1, 2, ...)"))
    } else {
        parse_timestamp(text).map(Travel::Time).ok_or_else(|| {
            format!(
                "'{text}' is not a time (expected e.g. '2025-11-24 14:00:00' in UTC, \
                 '2025-11-24T14:00:00+01:00' or '2025-11-24')"
            )
        })
    }
}

/// The table named at `k` (`name`, `schema.name`, `` delta.`path` ``) and the index of its
/// last token; `None` when no name is there; an error when a name is there but is not a
/// table this can read by name.
fn reference<'a>(
    at: &impl Fn(usize) -> Option<&'a Token>,
    k: usize,
) -> Result<Option<(TableName, usize)>> {
    let mut parts: Vec<&Word> = Vec::new();
    let mut last = k;
    while let Some(Token::Word(w)) = at(last) {
        parts.push(w);
        if matches!(at(last + 1), Some(Token::Period))
            && matches!(at(last + 2), Some(Token::Word(_)))
        {
            last += 2;
        } else {
            break;
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let ident = |w: &Word| match w.quote_style {
        None => w.value.to_ascii_lowercase(),
        Some(_) => w.value.clone(),
    };
    let names: Vec<String> = parts.iter().map(|w| ident(w)).collect();
    let shown = || {
        parts
            .iter()
            .map(|w| match w.quote_style {
                Some(q) => format!("{q}{}{}", w.value, if q == '[' { ']' } else { q }),
                None => w.value.clone(),
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    let table = match names.as_slice() {
        [schema, path] if schema == "delta" && parts[0].quote_style.is_none() => {
            return Ok(Some((TableName::Path(path.clone()), last)));
        }
        [name] => name,
        [schema, name] if schema == "public" => name,
        [catalog, schema, name] if catalog == "datafusion" && schema == "public" => name,
        _ => {
            return Err(syntax(format!(
                "unknown table {}: expected retry_queue, final_results, dead_letter_queue, \
                 attempts or delta.`path`",
                shown()
            )));
        }
    };
    let table = Table::ALL
        .into_iter()
        .find(|t| t.name() == table)
        .ok_or_else(|| {
            syntax(format!(
                "unknown table {}: expected retry_queue, final_results, dead_letter_queue, \
                 attempts or delta.`path`",
                shown()
            ))
        })?;
    Ok(Some((TableName::Queue(table), last)))
}

/// Whether the token after a table reference starts an alias (`AS x`, or a bare name).
fn is_alias(token: Option<&Token>) -> bool {
    use deltalake::datafusion::sql::sqlparser::keywords::RESERVED_FOR_TABLE_ALIAS;
    match token {
        Some(Token::Word(w)) => {
            w.quote_style.is_some()
                || w.keyword == Keyword::AS
                || !RESERVED_FOR_TABLE_ALIAS.contains(&w.keyword)
        }
        _ => false,
    }
}

/// `name` as a quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(sql: &str) -> Vec<Source> {
        rewrite(sql)
            .unwrap()
            .sources
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }

    #[test]
    fn plain_sql_passes_through_untouched() {
        for sql in [
            "SELECT * FROM retry_queue",
            "SELECT 'VERSION AS OF 3' AS x, \"version\" FROM attempts -- VERSION AS OF 2",
            "SELECT version FROM t ORDER BY version DESC",
            "DESCRIBE retry_queue",
            "SELECT COUNT(*) FROM delta.`/mnt/delta/retry_queue`",
            // Not after a name: aliases named `of`, or not Delta's (DataFusion refuses).
            "SELECT version AS of, processed_at::timestamp AS of FROM final_results",
            "SELECT 1 VERSION AS OF 1",
            "VERSION AS OF 1",
        ] {
            let r = rewrite(sql).unwrap();
            assert_eq!(r.sql, sql);
            assert!(r.sources.is_empty(), "{sql}");
        }
    }

    #[test]
    fn version_as_of_names_the_table_at_that_version_and_keeps_its_qualifier() {
        let r =
            rewrite("SELECT retry_queue.sample_id FROM retry_queue VERSION AS OF 12 WHERE x = 1")
                .unwrap();
        assert_eq!(
            r.sql,
            "SELECT retry_queue.sample_id FROM \"retry_queue VERSION AS OF 12\" AS retry_queue WHERE x = 1"
        );
        assert_eq!(
            r.sources,
            vec![(
                "retry_queue VERSION AS OF 12".to_owned(),
                Source::Table(TableName::Queue(Table::RetryQueue), Travel::Version(12))
            )]
        );
    }

    #[test]
    fn an_alias_after_the_clause_is_kept() {
        let r = rewrite("SELECT q.x FROM retry_queue FOR VERSION AS OF 3 q JOIN final_results AS f ON q.a = f.a")
            .unwrap();
        assert_eq!(
            r.sql,
            "SELECT q.x FROM \"retry_queue VERSION AS OF 3\" q JOIN final_results AS f ON q.a = f.a"
        );
        let r =
            rewrite("SELECT * FROM attempts TIMESTAMP AS OF '2025-11-24 14:00:00' AS a").unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM \"attempts TIMESTAMP AS OF 2025-11-24T14:00:00Z\" AS a"
        );
    }

    #[test]
    fn the_original_jobs_statements_rewrite() {
        let r = rewrite("SELECT * FROM delta.`/mnt/delta/retry_queue`\nVERSION AS OF 12").unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM \"delta.`/mnt/delta/retry_queue` VERSION AS OF 12\""
        );
        assert_eq!(
            sources("DESCRIBE HISTORY delta.`/mnt/delta/retry_queue`"),
            vec![Source::History(TableName::Path(
                "/mnt/delta/retry_queue".into()
            ))]
        );
        let r = rewrite("describe history retry_queue limit 5").unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM \"DESCRIBE HISTORY retry_queue\" limit 5"
        );
        let r = rewrite("SELECT * FROM (DESCRIBE DETAIL public.attempts) d").unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM (SELECT * FROM \"DESCRIBE DETAIL attempts\") d"
        );
    }

    #[test]
    fn each_reference_travels_on_its_own() {
        assert_eq!(
            sources(
                "SELECT * FROM retry_queue VERSION AS OF 1 r JOIN final_results f ON true \
                 JOIN retry_queue SYSTEM_TIME AS OF '2025-01-02' r2 ON true \
                 JOIN retry_queue VERSION AS OF '1' r3 ON true"
            ),
            vec![
                Source::Table(TableName::Queue(Table::RetryQueue), Travel::Version(1)),
                Source::Table(
                    TableName::Queue(Table::RetryQueue),
                    Travel::Time("2025-01-02T00:00:00Z".parse().unwrap())
                ),
            ]
        );
    }

    #[test]
    fn a_time_may_be_an_expression_evaluated_later() {
        let r = rewrite(
            "SELECT * FROM retry_queue TIMESTAMP AS OF current_timestamp() - INTERVAL 1 HOUR r \
             JOIN attempts FOR SYSTEM_TIME AS OF date_sub(current_date(), (1 + 2)) ON true \
             JOIN final_results TIMESTAMP AS OF '2025-01-01' + INTERVAL '2' DAYS f ON true",
        )
        .unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM \"retry_queue TIMESTAMP AS OF current_timestamp() - INTERVAL 1 HOUR\" r \
             JOIN \"attempts TIMESTAMP AS OF date_sub(current_date(), (1 + 2))\" AS attempts ON true \
             JOIN \"final_results TIMESTAMP AS OF '2025-01-01' + INTERVAL '2' DAYS\" f ON true"
        );
        let expressions: Vec<Travel> = r
            .sources
            .into_iter()
            .map(|(_, s)| match s {
                Source::Table(_, t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            expressions,
            vec![
                Travel::Expression("current_timestamp() - INTERVAL 1 HOUR".into()),
                Travel::Expression("date_sub(current_date(), (1 + 2))".into()),
                Travel::Expression("'2025-01-01' + INTERVAL '2' DAYS".into()),
            ]
        );
        // An unbalanced call is no expression: the time is missing.
        assert!(rewrite("SELECT * FROM attempts TIMESTAMP AS OF f(1").is_err());
        // VERSION AS OF takes a number only.
        assert!(
            rewrite("SELECT * FROM attempts VERSION AS OF 1 + 1")
                .is_ok_and(|r| r.sql.ends_with("+ 1"))
        );
    }

    #[test]
    fn quoted_names_and_multibyte_text_splice_at_the_right_bytes() {
        let r = rewrite("SELECT 'ünïcødé 😀' AS \"é\" FROM \"retry_queue\" VERSION AS OF 2 -- ✓")
            .unwrap();
        assert_eq!(
            r.sql,
            "SELECT 'ünïcødé 😀' AS \"é\" FROM \"retry_queue VERSION AS OF 2\" AS retry_queue -- ✓"
        );
        let r = rewrite("SELECT * FROM delta.`/tmp/a\"b` VERSION AS OF 0").unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM \"delta.`/tmp/a\"\"b` VERSION AS OF 0\""
        );
    }

    #[test]
    fn bad_clauses_are_errors_naming_what_and_where() {
        for (sql, expected) in [
            (
                "SELECT * FROM retry_queue VERSION AS OF -1",
                "expected a version number, found -",
            ),
            (
                "SELECT * FROM retry_queue VERSION AS OF 'x'",
                "'x' is not a version number",
            ),
            (
                "SELECT * FROM retry_queue VERSION AS OF 99999999999999999999999",
                "is not a version number",
            ),
            (
                "SELECT * FROM retry_queue VERSION AS OF",
                "ends before the version",
            ),
            (
                "SELECT * FROM retry_queue TIMESTAMP AS OF 'yesterday'",
                "'yesterday' is not a time",
            ),
            (
                "SELECT * FROM retry_queue TIMESTAMP AS OF x",
                "expected a quoted time",
            ),
            (
                "SELECT * FROM retry_queue TIMESTAMP AS OF now() -",
                "expected a quoted time",
            ),
            ("SELECT * FROM nope VERSION AS OF 1", "unknown table nope"),
            (
                "SELECT * FROM a.b.c.d VERSION AS OF 1",
                "unknown table a.b.c.d",
            ),
            ("DESCRIBE HISTORY", "DESCRIBE HISTORY takes a table"),
            ("DESCRIBE HISTORY nope", "unknown table nope"),
            (
                "DESCRIBE HISTORY retry_queue VERSION AS OF 1",
                "not a version of it",
            ),
            ("SELECT 'unterminated", "Unterminated string"),
        ] {
            let e = rewrite(sql).unwrap_err().to_string();
            assert!(e.contains(expected), "{sql}: {e}");
        }
        let e = rewrite("SELECT *\nFROM retry_queue VERSION AS OF x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column 32"), "{e}");
    }

    #[test]
    fn scripts_split_at_semicolons_outside_strings_and_comments() {
        let script =
            "SELECT ';' AS a; -- a; comment\n\n  SELECT 2\n;;\n/* ; */ SELECT \"x;\" FROM t";
        let got = statements(script).unwrap();
        assert_eq!(
            got,
            vec![
                Statement {
                    sql: "SELECT ';' AS a".into(),
                    line: 1
                },
                Statement {
                    sql: "-- a; comment\n\n  SELECT 2".into(),
                    line: 3
                },
                Statement {
                    sql: "/* ; */ SELECT \"x;\" FROM t".into(),
                    line: 5
                },
            ]
        );
        assert!(statements("  -- nothing\n").unwrap().is_empty());
        assert!(is_complete("SELECT 1;  -- done"));
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("  "));
    }

    #[test]
    fn times_parse_in_utc_unless_they_say_otherwise() {
        let t = |s| parse_timestamp(s).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2025-11-24T14:00:00Z").as_deref(),
            Some("2025-11-24T14:00:00+00:00")
        );
        assert_eq!(
            t("2025-11-24 14:00:00").as_deref(),
            Some("2025-11-24T14:00:00+00:00")
        );
        assert_eq!(
            t("2025-11-24T15:00:00+01:00").as_deref(),
            Some("2025-11-24T14:00:00+00:00")
        );
        assert_eq!(
            t("2025-11-24").as_deref(),
            Some("2025-11-24T00:00:00+00:00")
        );
        assert_eq!(t("14:00"), None);
        assert_eq!(t(""), None);
    }
}
