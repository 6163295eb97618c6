//! Output for the admin CLI: JSON lines for tools, aligned tables for
//! people. Every table cell has control characters escaped, so a hostile
//! command line cannot move the cursor or break a row.

use std::io::Write;

use picket_event::bytes::escape_control;
use serde_json::Value;

use crate::filter::known_event_types;
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
pub const EVENT_HEADERS: [&str; 6] = ["TIME", "HOSTNAME", "TYPE", "CONTAINER", "POD", "SUMMARY"];

/// Column widths of the `events follow` table, in characters, except the
/// last column, which is as wide as its cell. TYPE fits every known type.
fn follow_widths() -> [usize; 5] {
    let type_width = known_event_types().map(str::len).max().unwrap_or(4);
    [24, 16, type_width, 28, 28]
}

/// Writes the header of a table whose rows arrive later, one by one.
pub fn write_stream_header(out: &mut impl Write, headers: &[&str]) -> std::io::Result<()> {
    let cells: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    write_stream_row(out, &cells)
}

/// Writes one row of a streamed event table. Each column but the last has
/// the fixed width of [`follow_widths`], so rows stay aligned without
/// seeing the rows to come. A cell that is too wide is cut and ends in `…`.
pub fn write_stream_row(out: &mut impl Write, row: &[String]) -> std::io::Result<()> {
    let widths = follow_widths();
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        let cell = escape_control(cell);
        let Some(&width) = widths.get(i).filter(|_| i + 1 < row.len()) else {
            line.push_str(&cell);
            continue;
        };
        let length = cell.chars().count();
        if length > width {
            line.extend(cell.chars().take(width - 1));
            line.push('…');
        } else {
            line.push_str(&cell);
            line.push_str(&" ".repeat(width - length));
        }
        line.push_str("  ");
    }
    writeln!(out, "{}", line.trim_end())
}

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
    let pod = pod_cell(&event["CONTAINER"]);
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
        pod,
        summary,
    ]
}

/// Formats a `CONTAINER` object's pod as `namespace/name`, as kubectl
/// does, or `-` for a container outside Kubernetes and a host process.
fn pod_cell(container: &Value) -> String {
    let Some(name) = container["POD_NAME"].as_str() else {
        return "-".to_owned();
    };
    match container["POD_NAMESPACE"].as_str() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
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
        assert_eq!(row[4], "-");
        assert_eq!(row[5], "sh -c 'echo\nhi'");
    }

    #[test]
    fn event_row_shows_pod() {
        let record = r#"{"routing":{"event_type":"NEW_PROCESS","event_time":0,"event_id":"x","hostname":"h"},
            "event":{"COMMAND_LINE":"nginx","CONTAINER":{"ID":"0123456789abcdef","NAME":"k8s_web_web-7d9f_shop_uid_0",
            "POD_NAME":"web-7d9f","POD_NAMESPACE":"shop","POD_UID":"uid","K8S_CONTAINER_NAME":"web"}}}"#;
        assert_eq!(event_row(record)[4], "shop/web-7d9f");

        let record = r#"{"routing":{"event_type":"NEW_PROCESS","event_time":0,"event_id":"x","hostname":"h"},
            "event":{"COMMAND_LINE":"nginx","CONTAINER":{"ID":"0123456789abcdef","POD_NAME":"web-7d9f"}}}"#;
        assert_eq!(event_row(record)[4], "web-7d9f");

        let record = r#"{"routing":{"event_type":"NEW_PROCESS","event_time":0,"event_id":"x","hostname":"h"},
            "event":{"COMMAND_LINE":"sshd"}}"#;
        let row = event_row(record);
        assert_eq!(row[3], "");
        assert_eq!(row[4], "-");
    }

    #[test]
    fn stream_rows_align_with_header() {
        let mut out = Vec::new();
        write_stream_header(&mut out, &EVENT_HEADERS).unwrap();
        let rows = [
            vec![
                "2026-12-04T23:00:00.000Z".to_owned(),
                "node-1".to_owned(),
                "TERMINATE_TCP4_CONNECTION".to_owned(),
                "k8s_web_web-7d9f_shop_0f3f4f5e-6a7b-4d44-9a0e_0".to_owned(),
                "shop/web-7d9f".to_owned(),
                "curl -s http://example.invalid/".to_owned(),
            ],
            vec![
                "2026-12-04T23:00:01.000Z".to_owned(),
                "a-host-name-longer-than-sixteen".to_owned(),
                "NEW_PROCESS".to_owned(),
                "".to_owned(),
                "-".to_owned(),
                "sh -c 'x\n\x1b[2J'".to_owned(),
            ],
        ];
        for row in &rows {
            write_stream_row(&mut out, row).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");

        let summary_column = lines[0].find("SUMMARY").unwrap();
        for line in &lines[1..] {
            let prefix: String = line.chars().take(summary_column).collect();
            assert!(prefix.ends_with("  "), "{line:?}");
        }
        assert!(lines[1].contains("k8s_web_web-7d9f_shop_0f3f4…"), "{text}");
        assert!(lines[1]
            .chars()
            .skip(summary_column)
            .collect::<String>()
            .starts_with("curl"));
        assert!(lines[2].contains("a-host-name-lon…"), "{text}");
        assert!(lines[2]
            .chars()
            .skip(summary_column)
            .collect::<String>()
            .starts_with("sh -c"));
        assert!(!text.contains('\x1b'), "{text}");
    }
}
