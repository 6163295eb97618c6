//! Output for the admin CLI: JSON lines for tools, aligned tables for
//! people. Every table cell has control characters escaped, so a hostile
//! command line cannot move the cursor or break a row.

use std::io::Write;

use picket_event::bytes::escape_control;
use serde_json::Value;

use crate::timefmt::format_ms;

/// Maximum summary length in an event table row, in characters.
const SUMMARY_CHARS: usize = 160;

/// Writes an aligned table with a header row.
pub fn write_table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape_control(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }

    let write_row =
        |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
            let mut line = String::new();
            for (i, cell) in cells.enumerate() {
                if i + 1 == widths.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())
        };
    write_row(out, &mut headers.iter().copied())?;
    for row in &rows {
        write_row(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Column headers of [`event_row`].
pub const EVENT_HEADERS: [&str; 5] = ["TIME", "HOSTNAME", "TYPE", "CONTAINER", "SUMMARY"];

/// Formats a stored record as one table row.
pub fn event_row(record: &str) -> Vec<String> {
    let value: Value = serde_json::from_str(record).unwrap_or(Value::Null);
    let routing = &value["routing"];
    let event = &value["event"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();

    let time = routing["event_time"]
        .as_u64()
        .map(format_ms)
        .unwrap_or_default();
    let container = event["CONTAINER"]["NAME"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            event["CONTAINER"]["ID"]
                .as_str()
                .map(|id| id.chars().take(12).collect())
        })
        .unwrap_or_default();
    let summary = ["COMMAND_LINE", "FILE_PATH", "DOMAIN_NAME"]
        .iter()
        .find_map(|key| event[key].as_str().map(str::to_owned))
        .unwrap_or_else(|| event.to_string());
    let summary: String = if summary.chars().count() > SUMMARY_CHARS {
        summary
            .chars()
            .take(SUMMARY_CHARS)
            .chain("…".chars())
            .collect()
    } else {
        summary
    };
    vec![
        time,
        text(&routing["hostname"]),
        text(&routing["event_type"]),
        container,
        summary,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_escapes() {
        let rows = vec![
            vec!["a".to_owned(), "x\ny".to_owned(), "z".to_owned()],
            vec!["long value".to_owned(), "\x1b[2J".to_owned(), "".to_owned()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &["ONE", "TWO", "THREE"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "ONE         TWO        THREE");
        assert_eq!(lines[1], "a           x\\ny       z");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn event_row_summarises_command_line() {
        let record = r#"{"routing":{"event_type":"NEW_PROCESS","event_time":0,"event_id":"x","hostname":"h"},
            "event":{"COMMAND_LINE":"sh -c 'echo\nhi'","CONTAINER":{"ID":"0123456789abcdef","NAME":"web"}}}"#;
        let row = event_row(record);
        assert_eq!(row[0], "1970-01-01T00:00:00.000Z");
        assert_eq!(row[1], "h");
        assert_eq!(row[2], "NEW_PROCESS");
        assert_eq!(row[3], "web");
        assert_eq!(row[4], "sh -c 'echo\nhi'");
    }
}
