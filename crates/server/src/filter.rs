//! Event query filters, shared by the admin CLI and the HTTP API.
//!
//! A field match is `PATH OP VALUE`, for example
//! `event/COMMAND_LINE contains curl` or `routing/hostname is node-1`. `PATH`
//! is slash-separated and starts with `event/` or `routing/`; `OP` is one of
//! `is`, `is not`, `contains`, `starts with`, `ends with` or `exists`. The
//! value may be wrapped in single or double quotes. Comparisons are exact
//! and case-sensitive; numbers and booleans compare by their JSON text.

use crate::timefmt::{self, TimeError};

/// Default number of events a query returns.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest number of events one query may return.
pub const MAX_LIMIT: usize = 100_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("invalid --match {text:?}: {reason}")]
    Match { text: String, reason: &'static str },
    // The cause is part of the message and not a `source`, because the
    // HTTP API returns only the message, and a chain printed with `{:#}`
    // would repeat it.
    #[error("invalid --{name}: {reason}")]
    Time {
        name: &'static str,
        reason: TimeError,
    },
    #[error("--since cannot be combined with --from")]
    SinceAndFrom,
    #[error("--from {from} is after --to {to}")]
    EmptyRange { from: String, to: String },
    #[error("invalid --limit {0}: must be between 1 and {MAX_LIMIT}")]
    Limit(usize),
    #[error("invalid --{name} {value:?}: must not be empty")]
    Empty { name: &'static str, value: String },
    #[error(
        "invalid --type {value:?}: no sensor sends this type and no stored event has it.{} \
         Known types: {}",
        suggestion.map(|s| format!(" Did you mean {s}?")).unwrap_or_default(),
        known_event_types().collect::<Vec<_>>().join(", ")
    )]
    UnknownType {
        value: String,
        suggestion: Option<&'static str>,
    },
}

/// Event types a query may name: each type in `picket_event::types` and
/// the server's own `sensor_clone`. Type names are case-sensitive.
pub fn known_event_types() -> impl Iterator<Item = &'static str> {
    picket_event::types::ALL
        .iter()
        .copied()
        .chain([crate::ingest::SENSOR_CLONE])
}

/// Checks `--type` against [`known_event_types`]. A query for a known type
/// that no stored event has is valid and returns nothing.
fn check_event_type(value: &str) -> Result<(), FilterError> {
    if known_event_types().any(|known| known == value) {
        return Ok(());
    }
    Err(FilterError::UnknownType {
        value: value.to_owned(),
        suggestion: closest_event_type(value),
    })
}

/// Finds the known type a mistyped name most likely means: the same name in
/// another case, else one at most two single-character edits away.
fn closest_event_type(value: &str) -> Option<&'static str> {
    if let Some(same) = known_event_types().find(|known| known.eq_ignore_ascii_case(value)) {
        return Some(same);
    }
    let upper = value.to_ascii_uppercase();
    known_event_types()
        .map(|known| (edit_distance(&upper, &known.to_ascii_uppercase()), known))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &x) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(x != y);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// Filters as the user writes them; [`FilterArgs::parse`] validates them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Sensor id (SID) or hostname.
    #[arg(long)]
    pub sensor: Option<String>,
    /// Event type, such as NEW_PROCESS (case-sensitive). An unknown name is
    /// rejected with the list of known types.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Container id or container name.
    #[arg(long)]
    pub container: Option<String>,
    /// Kubernetes pod name.
    #[arg(long)]
    pub pod: Option<String>,
    /// Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events newer than this duration (30s, 15m, 1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events at or after this time (RFC 3339 or epoch milliseconds).
    #[arg(long)]
    pub from: Option<String>,
    /// Only events before this time (RFC 3339 or epoch milliseconds).
    #[arg(long)]
    pub to: Option<String>,
    /// Field match `PATH OP VALUE`; OP is is, is not, contains, starts with,
    /// ends with or exists. Repeat to require several.
    #[arg(long = "match", value_name = "EXPR")]
    pub matches: Vec<String>,
    /// Maximum number of events returned.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Is,
    IsNot,
    Contains,
    StartsWith,
    EndsWith,
    Exists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMatch {
    /// Path segments, such as `["event", "COMMAND_LINE"]`.
    pub path: Vec<String>,
    pub op: MatchOp,
    pub value: String,
}

/// A validated query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Organisation the query is confined to; `None` only for the admin CLI.
    pub org_id: Option<String>,
    pub sensor: Option<String>,
    pub event_type: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub matches: Vec<FieldMatch>,
    /// Cursor for `follow`: only events stored after this one, oldest first.
    /// Without it a query returns the newest `limit` events, newest first.
    pub after_num: Option<i64>,
    pub limit: usize,
}

impl FilterArgs {
    /// Validates the filters. `now_ms` anchors `--since`.
    pub fn parse(&self, now_ms: u64) -> Result<EventQuery, FilterError> {
        let text =
            |name: &'static str, value: &Option<String>| -> Result<Option<String>, FilterError> {
                match value {
                    Some(v) if v.trim().is_empty() => Err(FilterError::Empty {
                        name,
                        value: v.clone(),
                    }),
                    Some(v) => Ok(Some(v.clone())),
                    None => Ok(None),
                }
            };

        let mut from_ms = match &self.from {
            Some(from) => {
                Some(
                    timefmt::parse_timestamp(from).map_err(|reason| FilterError::Time {
                        name: "from",
                        reason,
                    })?,
                )
            }
            None => None,
        };
        if let Some(since) = &self.since {
            if from_ms.is_some() {
                return Err(FilterError::SinceAndFrom);
            }
            let span = timefmt::parse_duration_ms(since).map_err(|reason| FilterError::Time {
                name: "since",
                reason,
            })?;
            from_ms = Some(now_ms.saturating_sub(span));
        }
        let to_ms = match &self.to {
            Some(to) => Some(
                timefmt::parse_timestamp(to)
                    .map_err(|reason| FilterError::Time { name: "to", reason })?,
            ),
            None => None,
        };
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            if from > to {
                return Err(FilterError::EmptyRange {
                    from: timefmt::format_ms(from),
                    to: timefmt::format_ms(to),
                });
            }
        }

        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(FilterError::Limit(limit));
        }

        // An unknown type is checked against the store by the caller, see
        // [`EventQuery::unknown_type`].
        let event_type = text("type", &self.event_type)?;

        Ok(EventQuery {
            org_id: None,
            sensor: text("sensor", &self.sensor)?,
            event_type,
            container: text("container", &self.container)?,
            pod: text("pod", &self.pod)?,
            namespace: text("namespace", &self.namespace)?,
            from_ms,
            to_ms,
            matches: self
                .matches
                .iter()
                .map(|m| parse_match(m))
                .collect::<Result<_, _>>()?,
            after_num: None,
            limit,
        })
    }
}

impl EventQuery {
    /// Returns the error for an event type that no Picket sensor sends, with
    /// the query that finds whether such events are stored anyway. A sensor
    /// newer than this server may send types the server does not know, so
    /// callers reject the type only when that query finds nothing.
    pub fn unknown_type(&self) -> Option<(FilterError, EventQuery)> {
        let error = check_event_type(self.event_type.as_deref()?).err()?;
        let probe = EventQuery {
            org_id: self.org_id.clone(),
            event_type: self.event_type.clone(),
            limit: 1,
            ..EventQuery::default()
        };
        Some((error, probe))
    }
}

/// Parses one `PATH OP VALUE` expression.
pub fn parse_match(text: &str) -> Result<FieldMatch, FilterError> {
    let fail = |reason| FilterError::Match {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let (path_text, rest) = trimmed
        .split_once(char::is_whitespace)
        .unwrap_or((trimmed, ""));
    let rest = rest.trim_start();

    let path: Vec<String> = path_text.split('/').map(str::to_owned).collect();
    if path.len() < 2 || !matches!(path[0].as_str(), "event" | "routing") {
        return Err(fail(
            "the path must start with event/ or routing/, such as event/COMMAND_LINE",
        ));
    }
    if path
        .iter()
        .any(|p| p.is_empty() || p.contains('"') || p.contains('\\'))
    {
        return Err(fail(
            "a path segment is empty or contains a quote or backslash",
        ));
    }

    const OPS: [(&str, MatchOp); 6] = [
        ("is not ", MatchOp::IsNot),
        ("is ", MatchOp::Is),
        ("contains ", MatchOp::Contains),
        ("starts with ", MatchOp::StartsWith),
        ("ends with ", MatchOp::EndsWith),
        ("exists", MatchOp::Exists),
    ];
    let (op, value_text) = OPS
        .iter()
        .find_map(|(word, op)| rest.strip_prefix(word).map(|value| (*op, value)))
        .ok_or_else(|| fail("expected PATH OP VALUE, where OP is is, is not, contains, starts with, ends with or exists"))?;

    if op == MatchOp::Exists {
        if !value_text.trim().is_empty() {
            return Err(fail("exists takes no value"));
        }
        return Ok(FieldMatch {
            path,
            op,
            value: String::new(),
        });
    }
    let value = unquote(value_text.trim())
        .ok_or_else(|| fail("the value has an opening quote without a closing one"))?;
    if value.is_empty() && op != MatchOp::Is && op != MatchOp::IsNot {
        return Err(fail("the value is empty"));
    }
    Ok(FieldMatch { path, op, value })
}

fn unquote(text: &str) -> Option<String> {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote) {
            return inner.strip_suffix(quote).map(str::to_owned);
        }
    }
    Some(text.to_owned())
}

impl FieldMatch {
    /// The path in SQLite JSON path syntax, such as `$."event"."COMMAND_LINE"`.
    /// All-digit segments index arrays.
    pub fn json_path(&self) -> String {
        let mut out = String::from("$");
        for part in &self.path {
            if part.bytes().all(|b| b.is_ascii_digit()) {
                out.push_str(&format!("[{part}]"));
            } else {
                out.push_str(&format!(".\"{part}\""));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_forms_parse() {
        let m = parse_match("event/COMMAND_LINE contains foo bar").unwrap();
        assert_eq!(m.path, ["event", "COMMAND_LINE"]);
        assert_eq!(m.op, MatchOp::Contains);
        assert_eq!(m.value, "foo bar");
        assert_eq!(m.json_path(), "$.\"event\".\"COMMAND_LINE\"");

        let m = parse_match("event/FILE_PATH starts with '/tmp/x y'").unwrap();
        assert_eq!(m.op, MatchOp::StartsWith);
        assert_eq!(m.value, "/tmp/x y");

        let m = parse_match("routing/hostname is not node-1").unwrap();
        assert_eq!(m.op, MatchOp::IsNot);
        assert_eq!(m.value, "node-1");

        let m = parse_match("event/CONTAINER exists").unwrap();
        assert_eq!(m.op, MatchOp::Exists);

        let m = parse_match("event/ARGS/0 is sh").unwrap();
        assert_eq!(m.json_path(), "$.\"event\".\"ARGS\"[0]");
    }

    #[test]
    fn bad_matches_are_rejected() {
        for text in [
            "",
            "COMMAND_LINE contains foo",
            "event/COMMAND_LINE",
            "event/COMMAND_LINE like foo",
            "event/COMMAND_LINE contains",
            "event//X is 1",
            "event/A\"B is 1",
            "event/X is 'open",
            "event/X exists 3",
        ] {
            assert!(
                matches!(parse_match(text), Err(FilterError::Match { .. })),
                "{text:?} was accepted"
            );
        }
    }

    #[test]
    fn time_filters_validate() {
        let args = FilterArgs {
            since: Some("1h".into()),
            ..Default::default()
        };
        assert_eq!(
            args.parse(10_000_000).unwrap().from_ms,
            Some(10_000_000 - 3_600_000)
        );

        let args = FilterArgs {
            since: Some("1h".into()),
            from: Some("0".into()),
            ..Default::default()
        };
        assert_eq!(args.parse(0), Err(FilterError::SinceAndFrom));

        let args = FilterArgs {
            from: Some("2000".into()),
            to: Some("1000".into()),
            ..Default::default()
        };
        assert!(matches!(args.parse(0), Err(FilterError::EmptyRange { .. })));

        let args = FilterArgs {
            since: Some("soon".into()),
            ..Default::default()
        };
        let error = args.parse(0).unwrap_err();
        assert!(matches!(error, FilterError::Time { name: "since", .. }));
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(chain.matches("invalid duration").count(), 1, "{chain}");

        let args = FilterArgs {
            limit: Some(0),
            ..Default::default()
        };
        assert_eq!(args.parse(0), Err(FilterError::Limit(0)));

        let args = FilterArgs {
            event_type: Some(" ".into()),
            ..Default::default()
        };
        assert!(matches!(
            args.parse(0),
            Err(FilterError::Empty { name: "type", .. })
        ));

        let args = FilterArgs {
            sensor: Some(" ".into()),
            ..Default::default()
        };
        assert!(matches!(
            args.parse(0),
            Err(FilterError::Empty { name: "sensor", .. })
        ));
    }

    #[test]
    fn event_type_is_checked() {
        let parse = |name: &str| {
            FilterArgs {
                event_type: Some(name.into()),
                ..Default::default()
            }
            .parse(0)
        };

        for known in ["NEW_PROCESS", "FILE_RENAME", "NETSTAT_REP", "sensor_clone"] {
            let query = parse(known).unwrap();
            assert_eq!(query.event_type.as_deref(), Some(known));
            assert!(query.unknown_type().is_none(), "{known} was rejected");
        }

        for (name, suggestion) in [
            ("NEW_PROCES", Some("NEW_PROCESS")),
            ("new_process", Some("NEW_PROCESS")),
            ("FILE_CREATED", Some("FILE_CREATE")),
            ("SENSOR_CLONE", Some("sensor_clone")),
            ("PROCESS_START", None),
            ("NEW_PROCESS ", Some("NEW_PROCESS")),
        ] {
            let query = FilterArgs {
                event_type: Some(name.into()),
                sensor: Some("host-a".into()),
                ..Default::default()
            }
            .parse(0)
            .expect("an unknown type parses; the store decides");
            let (error, probe) = query.unknown_type().expect("unknown type");
            // The probe only checks whether this type is stored at all.
            assert_eq!(probe.event_type.as_deref(), Some(name));
            assert_eq!(probe.sensor, None);
            assert_eq!(probe.limit, 1);
            assert_eq!(
                error,
                FilterError::UnknownType {
                    value: name.into(),
                    suggestion,
                },
                "{name:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("{name:?}")), "{message}");
            assert!(message.contains("Known types: CONNECTED, "), "{message}");
            assert!(message.ends_with("sensor_clone"), "{message}");
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "abd"), 1);
        assert_eq!(edit_distance("abc", "ac"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
