//! Rules per error: which failures get another treatment than the round's schedule.
//!
//! A rules file (TOML, `--rules FILE`) lists rules in order; the first whose conditions
//! all hold for a failure decides its treatment, and a failure no rule matches keeps the
//! default (a transient failure retried on the round's schedule, a permanent one
//! dead-lettered). The `attempts` row of every attempt a rule decided names the rule.
//!
//! ```toml
//! # A 429 means "not yet": wait, and count no retry.
//! [[rule]]
//! name = "throttled"
//! status = [429]
//! action = "snooze"
//! wait = "1m"
//!
//! # A schema error is permanent, even when it comes back as a 500.
//! [[rule]]
//! name = "schema"
//! message = "(?i)schema mismatch"
//! action = "permanent"
//!
//! # A deadlock wants a fast retry, and more of them.
//! [[rule]]
//! name = "deadlock"
//! class = ["deadlock"]
//! action = "transient"
//! base_backoff = "1s"
//! max_backoff = "30s"
//! max_retries = 10
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::outcome::{ErrorClass, Outcome};
use crate::policy::{Jitter, RetryPolicy};

/// The rules of a queue, in the order they are tried.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// One rule: when it applies, and what it does.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name, written in the `rule` column of the attempts it decided.
    pub name: String,
    when: When,
    /// What it does to a failure it matches.
    pub action: Action,
    /// For a `transient` rule, a deadline from the record's enqueue besides `--max-age`
    /// (the earlier one decides): a failure it matches whose next try would fall at or after it
    /// is dead, with reason `expired`.
    pub max_age: Option<Duration>,
}

/// What a rule does to a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Dead-letter the record now (reason `permanent`).
    Permanent,
    /// Retry the record on this schedule, one more retry counted; dead-letter it when the
    /// schedule's retries are spent (`retries_exhausted`).
    Transient(RetryPolicy),
    /// Wait, with no retry counted.
    Snooze(Snooze),
}

/// A snooze: the record waits and comes back with its retry count unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snooze {
    /// How long it waits (longer if the downstream asked, up to `--max-retry-after`).
    pub wait: Duration,
    /// Most snoozes in a row; the next such failure counts as a retry of the default
    /// schedule. Default value is 100.
    pub max_snoozes: u32,
    /// Snoozes stop this long after the record was enqueued; a later such failure
    /// counts as a retry of the default schedule. Default value is 1 day.
    pub max_age: Duration,
}

/// The conditions of a rule: each one given must hold.
#[derive(Debug, Clone, Default)]
struct When {
    statuses: Vec<u16>,
    exit_codes: Vec<i32>,
    classes: Vec<String>,
    message: Option<regex::Regex>,
    outcome: Option<Failure>,
}

/// Which failures a rule's `outcome` condition takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Failure {
    Transient,
    Permanent,
}

/// A rule as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(default, deserialize_with = "statuses")]
    status: Vec<u16>,
    #[serde(default, deserialize_with = "exit_codes")]
    exit_code: Vec<i32>,
    #[serde(default, deserialize_with = "classes")]
    class: Vec<String>,
    message: Option<String>,
    outcome: Option<Failure>,
    action: String,
    // transient
    base_backoff: Option<String>,
    multiplier: Option<f64>,
    max_backoff: Option<String>,
    max_retries: Option<u32>,
    jitter: Option<String>,
    // snooze
    wait: Option<String>,
    max_snoozes: Option<u32>,
    max_age: Option<String>,
}

/// One value or a list of them (`status = 429` or `status = [429, 503]`); `field` names
/// the field in the error.
fn one_or_many<'de, D, T>(d: D, field: &str, what: &str) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    match OneOrMany::<T>::deserialize(d) {
        Ok(OneOrMany::One(v)) => Ok(vec![v]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(format!(
            "{field} must be {what}, or a list of them"
        ))),
    }
}

fn statuses<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u16>, D::Error> {
    one_or_many(d, "status", "an HTTP status (a number from 100 to 599)")
}

fn exit_codes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i32>, D::Error> {
    one_or_many(d, "exit_code", "an exit status (a number from 0 to 255)")
}

fn classes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    one_or_many(d, "class", "a class name (a string)")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<RuleFile>,
}

/// Most rules a file may hold.
pub const MAX_RULES: usize = 1000;

/// Most bytes a rule's compiled message pattern may take.
const MAX_PATTERN_SIZE: usize = 1 << 20;

impl Rules {
    /// No rules: every failure keeps the default treatment.
    pub fn none() -> Rules {
        Rules::default()
    }

    /// Reads a rules file. Errors name the file and what is wrong (with the line, for
    /// TOML that cannot be read).
    pub fn load(path: &Path) -> Result<Rules> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidConfig(format!("--rules {}: cannot read it: {e}", path.display()))
        })?;
        Rules::parse(&text).map_err(|e| {
            Error::InvalidConfig(format!("--rules {}: {}", path.display(), e.trim_end()))
        })
    }

    /// Reads rules from TOML text; the error says what is wrong.
    ///
    /// ```
    /// use retrylake::{Outcome, Rules};
    ///
    /// let rules = Rules::parse(r#"
    ///     [[rule]]
    ///     name = "throttled"
    ///     status = [429]
    ///     action = "snooze"
    ///     wait = "1m"
    /// "#).unwrap();
    /// let throttled = Outcome::transient("HTTP 429").with_class(retrylake::ErrorClass::Status(429));
    /// assert_eq!(rules.find(&throttled).map(|r| r.name.as_str()), Some("throttled"));
    /// assert!(rules.find(&Outcome::transient("HTTP 503")).is_none());
    /// assert!(Rules::parse("[[rule]]\nname = \"x\"\naction = \"permanent\"").is_err());
    /// ```
    pub fn parse(text: &str) -> std::result::Result<Rules, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        Rules::from_file(file)
    }

    fn from_file(file: File) -> std::result::Result<Rules, String> {
        if file.rule.len() > MAX_RULES {
            return Err(format!("{} rules, at most {MAX_RULES}", file.rule.len()));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
        for (n, rule) in file.rule.into_iter().enumerate() {
            let name = rule.name.clone();
            let rule =
                Rule::from_file(rule).map_err(|e| format!("rule {} ('{name}'): {e}", n + 1))?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(format!(
                    "rule {}: the name '{}' is used twice",
                    n + 1,
                    rule.name
                ));
            }
            rules.push(rule);
        }
        Ok(Rules { rules })
    }

    /// Reads rules from JSON text of the same shape as the TOML file (`{"rule": [...]}`):
    /// how the Python package hands over rules given as dicts.
    pub fn parse_json(text: &str) -> std::result::Result<Rules, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Values {
            rule: Vec<serde_json::Value>,
        }
        let values: Values = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let rule = values
            .rule
            .into_iter()
            .enumerate()
            .map(|(n, v)| serde_json::from_value(v).map_err(|e| format!("rule {}: {e}", n + 1)))
            .collect::<std::result::Result<Vec<RuleFile>, String>>()?;
        Rules::from_file(File { rule })
    }

    /// The first rule matching a failure; `None` for a success or a failure no rule
    /// matches.
    pub fn find(&self, outcome: &Outcome) -> Option<&Rule> {
        if matches!(outcome, Outcome::Success { .. }) {
            return None;
        }
        self.rules.iter().find(|r| r.when.matches(outcome))
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }
}

impl When {
    fn matches(&self, outcome: &Outcome) -> bool {
        let class = outcome.class();
        let failure = match outcome {
            Outcome::Transient { .. } => Failure::Transient,
            _ => Failure::Permanent,
        };
        (self.statuses.is_empty()
            || matches!(class, Some(ErrorClass::Status(s)) if self.statuses.contains(s)))
            && (self.exit_codes.is_empty()
                || matches!(class, Some(ErrorClass::Exit(c)) if self.exit_codes.contains(c)))
            && (self.classes.is_empty()
                || matches!(class, Some(ErrorClass::Named(n)) if self.classes.contains(n)))
            && self
                .message
                .as_ref()
                .is_none_or(|m| m.is_match(outcome.error().unwrap_or_default()))
            && self.outcome.is_none_or(|o| o == failure)
    }

    fn is_empty(&self) -> bool {
        self.statuses.is_empty()
            && self.exit_codes.is_empty()
            && self.classes.is_empty()
            && self.message.is_none()
            && self.outcome.is_none()
    }
}

impl Rule {
    fn from_file(r: RuleFile) -> std::result::Result<Rule, String> {
        if r.name.trim().is_empty() || r.name.len() > 100 || r.name.chars().any(char::is_control) {
            return Err("a name is 1 to 100 characters, none of them control characters".into());
        }
        if let Some(bad) = r.status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!("status {bad} is not an HTTP status (100 to 599)"));
        }
        if let Some(bad) = r.exit_code.iter().find(|c| !(0..=255).contains(*c)) {
            return Err(format!(
                "exit_code {bad} is not an exit status (0 to 255; a command killed by a signal \
                 has none: match its message, \"killed by signal N\")"
            ));
        }
        let message = r
            .message
            .as_deref()
            .map(|m| {
                regex::RegexBuilder::new(m)
                    .size_limit(MAX_PATTERN_SIZE)
                    .build()
                    .map_err(|e| format!("message is not a valid pattern: {e}"))
            })
            .transpose()?;
        let when = When {
            statuses: r.status,
            exit_codes: r.exit_code,
            classes: r.class,
            message,
            outcome: r.outcome,
        };
        if when.is_empty() {
            return Err(
                "no condition: give status, exit_code, class, message or outcome (a rule \
                 for every failure is the default schedule, set with --max-retries and the \
                 backoff flags)"
                    .into(),
            );
        }
        let schedule = [
            ("base_backoff", r.base_backoff.is_some()),
            ("multiplier", r.multiplier.is_some()),
            ("max_backoff", r.max_backoff.is_some()),
            ("max_retries", r.max_retries.is_some()),
            ("jitter", r.jitter.is_some()),
        ];
        let snooze = [
            ("wait", r.wait.is_some()),
            ("max_snoozes", r.max_snoozes.is_some()),
        ];
        let only = |action: &str, given: &[(&str, bool)]| match given.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(format!("{field} does not apply to action '{action}'")),
            None => Ok(()),
        };
        let action = match r.action.as_str() {
            "permanent" => {
                only("permanent", &schedule)?;
                only("permanent", &snooze)?;
                only("permanent", &[("max_age", r.max_age.is_some())])?;
                Action::Permanent
            }
            "transient" => {
                only("transient", &snooze)?;
                let defaults = RetryPolicy::default();
                let mut builder = RetryPolicy::builder()
                    .base(duration("base_backoff", r.base_backoff)?.unwrap_or(defaults.base()))
                    .multiplier(r.multiplier.unwrap_or(defaults.multiplier()))
                    .max_backoff(
                        duration("max_backoff", r.max_backoff)?.unwrap_or(defaults.max_backoff()),
                    )
                    .max_retries(r.max_retries.unwrap_or(defaults.max_retries()));
                if let Some(jitter) = r.jitter {
                    builder = builder.jitter(
                        jitter
                            .parse::<Jitter>()
                            .map_err(|e| format!("jitter: {e}"))?,
                    );
                }
                Action::Transient(builder.build().map_err(|e| e.to_string())?)
            }
            "snooze" => {
                only("snooze", &schedule)?;
                let wait = duration("wait", r.wait)?
                    .ok_or("a snooze needs wait (how long, e.g. \"1m\")")?;
                if wait.is_zero() {
                    return Err("wait must be more than 0".into());
                }
                Action::Snooze(Snooze {
                    wait,
                    max_snoozes: r.max_snoozes.unwrap_or(100),
                    max_age: duration("max_age", r.max_age.clone())?
                        .unwrap_or(Duration::from_secs(24 * 3600)),
                })
            }
            other => {
                return Err(format!(
                    "unknown action '{other}' (expected permanent, transient or snooze)"
                ));
            }
        };
        let max_age = match action {
            Action::Transient(_) => duration("max_age", r.max_age)?,
            _ => None,
        };
        if max_age.is_some_and(|age| age.is_zero()) {
            return Err("max_age must be more than 0".into());
        }
        Ok(Rule {
            name: r.name,
            when,
            action,
            max_age,
        })
    }
}

/// A duration field of a rule (`"90s"`, `"2m"`), at most 100 years.
fn duration(field: &str, text: Option<String>) -> std::result::Result<Option<Duration>, String> {
    let Some(text) = text else { return Ok(None) };
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{field} '{text}' is not a duration (such as 90s, 2m, 1h): {e}"))?;
    if d > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(format!("{field} '{text}' is longer than 100 years"));
    }
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[rule]]
        name = "throttled"
        status = [429]
        action = "snooze"
        wait = "1m"
        max_age = "6h"

        [[rule]]
        name = "schema"
        message = "(?i)schema mismatch"
        action = "permanent"

        [[rule]]
        name = "deadlock"
        class = ["deadlock", "SerializationFailure"]
        outcome = "transient"
        action = "transient"
        base_backoff = "1s"
        max_backoff = "30s"
        max_retries = 10
        jitter = "full"

        [[rule]]
        name = "usage"
        exit_code = [64]
        action = "permanent"
    "#;

    fn name<'r>(rules: &'r Rules, outcome: &Outcome) -> Option<&'r str> {
        rules.find(outcome).map(|r| r.name.as_str())
    }

    #[test]
    fn the_first_rule_whose_conditions_all_hold_decides() {
        let rules = Rules::parse(EXAMPLE).unwrap();
        let status = |s| Outcome::transient("x").with_class(ErrorClass::Status(s));
        assert_eq!(name(&rules, &status(429)), Some("throttled"));
        assert_eq!(name(&rules, &status(503)), None);
        assert_eq!(
            name(
                &rules,
                &Outcome::transient("HTTP 500: Schema Mismatch in field a")
            ),
            Some("schema")
        );
        assert_eq!(
            name(
                &rules,
                &Outcome::transient("deadlock").with_class("deadlock")
            ),
            Some("deadlock")
        );
        // The deadlock rule takes transient failures only.
        assert_eq!(
            name(
                &rules,
                &Outcome::permanent("deadlock").with_class("deadlock")
            ),
            None
        );
        assert_eq!(
            name(
                &rules,
                &Outcome::permanent("bad flag").with_class(ErrorClass::Exit(64))
            ),
            Some("usage")
        );
        // An exit status is not an HTTP status, nor a class.
        assert_eq!(
            name(
                &rules,
                &Outcome::transient("x").with_class(ErrorClass::Exit(429))
            ),
            None
        );
        assert_eq!(name(&rules, &Outcome::success("ok")), None);
        let Action::Transient(policy) = &rules.iter().nth(2).unwrap().action else {
            panic!()
        };
        assert_eq!(
            (policy.base(), policy.max_retries()),
            (Duration::from_secs(1), 10)
        );
        assert_eq!(
            rules.iter().next().unwrap().action,
            Action::Snooze(Snooze {
                wait: Duration::from_secs(60),
                max_snoozes: 100,
                max_age: Duration::from_secs(6 * 3600)
            })
        );
    }

    #[test]
    fn a_bad_rule_is_refused_naming_it_and_what_is_wrong() {
        for (text, wrong) in [
            (
                "[[rule]]\nname = \"a\"\naction = \"permanent\"",
                "rule 1 ('a'): no condition",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [42]\naction = \"permanent\"",
                "status 42",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"retry\"",
                "unknown action 'retry'",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"snooze\"",
                "needs wait",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"snooze\"\nwait = \"0s\"",
                "more than 0",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"snooze\"\nwait = \"soon\"",
                "wait 'soon' is not a duration",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"permanent\"\nwait = \"1s\"",
                "wait does not apply to action 'permanent'",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"snooze\"\nwait = \"1s\"\nmax_retries = 3",
                "max_retries does not apply",
            ),
            (
                "[[rule]]\nname = \"a\"\nmessage = \"(\"\naction = \"permanent\"",
                "not a valid pattern",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [1]\nstatuses = [2]\naction = \"permanent\"",
                "unknown field `statuses`",
            ),
            (
                "[[rule]]\nname = \"\"\nstatus = [429]\naction = \"permanent\"",
                "a name is 1 to 100",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"permanent\"\n[[rule]]\nname = \"a\"\nstatus = [500]\naction = \"permanent\"",
                "rule 2: the name 'a' is used twice",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"transient\"\nmultiplier = 0.5",
                "multiplier",
            ),
            (
                "[[rule]]\nname = \"a\"\nstatus = [429]\naction = \"snooze\"\nwait = \"1000000000000y\"",
                "wait",
            ),
            ("[[rule]\n", "TOML parse error"),
            (
                "[[rule]]\nname = \"a\"\nstatus = \"429\"\naction = \"permanent\"",
                "status must be an HTTP status",
            ),
            (
                "[[rule]]\nname = \"a\"\nclass = 3\naction = \"permanent\"",
                "class must be a class name",
            ),
            (
                "[[rule]]\nname = \"a\"\nexit_code = [-9]\naction = \"permanent\"",
                "exit_code -9 is not an exit status",
            ),
        ] {
            let err = Rules::parse(text).unwrap_err();
            assert!(err.contains(wrong), "{text}: {err}");
        }
        assert!(Rules::parse("").unwrap().is_empty());
        // One value stands for a list of one.
        let one = Rules::parse(
            "[[rule]]\nname = \"a\"\nstatus = 429\nclass = \"x\"\naction = \"permanent\"",
        );
        assert!(one.is_ok(), "{one:?}");
        let err = Rules::parse_json(r#"{"rule": [{"name": "a", "status": [429], "action": "permanent"}, {"name": "b", "wait": 3}]}"#).unwrap_err();
        assert!(
            err.starts_with("rule 2: invalid type: integer `3`"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_read_is_named() {
        let err = Rules::load(Path::new("/no/such/rules.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--rules /no/such/rules.toml: cannot read it"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[[rule]]\nname = 1\n").unwrap();
        let err = Rules::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("rules.toml") && err.contains("line 2"),
            "{err}"
        );
    }
}
