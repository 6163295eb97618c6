//! Admin commands that work directly on a data directory, with or without a
//! running server (SQLite in WAL mode lets both use the database at once).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use picket_event::key::InstallationKey;

use crate::auth;
use crate::filter::{EventQuery, FilterArgs};
use crate::output::{event_row, write_stream_header, write_stream_row, write_table, EVENT_HEADERS};
use crate::store::{SqliteStore, Store};
use crate::timefmt::format_ms;
use crate::tls;

/// File in the data directory where `serve` records the URL sensors use.
pub const SERVER_INFO_FILE: &str = "server.json";
/// URL written into installation keys when nothing else names one.
pub const DEFAULT_URL: &str = "https://127.0.0.1:4443";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Opens the store, creating the data directory and database if needed.
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(data_dir, 0)
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

/// Opens the store of an existing data directory. Commands other than
/// `org create` and `serve` use it, so a mistyped `--data` is reported
/// instead of silently creating an empty store there.
pub fn open_existing_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    let db = data_dir.join(crate::store::sqlite::DB_FILE);
    if !db.exists() {
        anyhow::bail!(
            "no Picket data directory at {} ({} not found); check --data or PICKET_DATA, \
             or create one with `picket-server org create NAME --data {}`",
            data_dir.display(),
            db.display(),
            data_dir.display()
        );
    }
    open_store(data_dir)
}

/// Resolves an optional organisation name or id to its id.
fn org_id_of(store: &SqliteStore, org: Option<&str>) -> anyhow::Result<Option<String>> {
    Ok(org.map(|o| store.find_org(o)).transpose()?.map(|o| o.id))
}

/// Writes each row as one JSON line.
fn write_json_lines<T: serde::Serialize>(out: &mut impl Write, rows: &[T]) -> anyhow::Result<()> {
    for row in rows {
        writeln!(out, "{}", serde_json::to_string(row)?)?;
    }
    Ok(())
}

/// Records the advertised URL for later `key create` runs.
pub fn write_server_info(data_dir: &Path, advertise_url: &str) -> anyhow::Result<()> {
    let path = data_dir.join(SERVER_INFO_FILE);
    let body = serde_json::json!({ "advertise_url": advertise_url }).to_string();
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
}

fn advertised_url(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(SERVER_INFO_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["advertise_url"].as_str().map(str::to_owned)
}

pub fn org_create(data_dir: &Path, name: &str, out: &mut impl Write) -> anyhow::Result<()> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        anyhow::bail!(
            "invalid organisation name {name:?}: must be non-empty text without control characters"
        );
    }
    let org = open_store(data_dir)?.create_org(name)?;
    writeln!(out, "{}", org.id)?;
    Ok(())
}

pub fn org_list(data_dir: &Path, format: Format, out: &mut impl Write) -> anyhow::Result<()> {
    let orgs = open_existing_store(data_dir)?.list_orgs()?;
    match format {
        Format::Json => orgs
            .iter()
            .try_for_each(|o| writeln!(out, "{}", serde_json::to_string(o)?).map_err(Into::into)),
        Format::Table => {
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|o| vec![o.id.clone(), o.name.clone(), format_ms(o.created_ms)])
                .collect();
            Ok(write_table(out, &["ID", "NAME", "CREATED"], &rows)?)
        }
    }
}

/// Options of `key create`.
pub struct KeyCreate<'a> {
    pub org: &'a str,
    pub tags: Vec<String>,
    pub description: &'a str,
    /// URL sensors use; defaults to the one `serve` recorded.
    pub url: Option<&'a str>,
    pub cert_sans: &'a [String],
}

/// Creates an installation key and prints it, the one time its secret is shown.
pub fn key_create(
    data_dir: &Path,
    opts: KeyCreate<'_>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for tag in &opts.tags {
        if tag.is_empty()
            || tag.len() > 64
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            anyhow::bail!("invalid tag {tag:?}: use 1 to 64 letters, digits, '-', '_', '.' or ':'");
        }
    }
    let url = opts
        .url
        .map(str::to_owned)
        .or_else(|| advertised_url(data_dir))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());

    let store = open_existing_store(data_dir)?;
    let org = store.find_org(opts.org)?;
    // The certificate is created here when the server has not run yet, so the
    // key can carry its fingerprint.
    let cert =
        tls::load_or_create(data_dir, opts.cert_sans).context("loading the server certificate")?;
    let secret = auth::new_secret();
    let row = store.create_installation_key(
        &org.id,
        &opts.tags,
        opts.description,
        auth::sha256(&secret),
    )?;

    let key = InstallationKey {
        url,
        org_id: org.id,
        key_id: row.id,
        secret,
        cert_sha256: cert.fingerprint,
    };
    let encoded = key.encode();
    InstallationKey::decode(&encoded)
        .context("the new installation key does not validate; check --url")?;
    writeln!(out, "{encoded}")?;
    Ok(())
}

pub fn key_list(
    data_dir: &Path,
    org: Option<&str>,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = open_existing_store(data_dir)?;
    let org_id = org_id_of(&store, org)?;
    let keys = store.list_installation_keys(org_id.as_deref())?;
    match format {
        Format::Json => write_json_lines(out, &keys),
        Format::Table => {
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.org_id.clone(),
                        k.tags.join(","),
                        if k.revoked { "revoked" } else { "active" }.to_owned(),
                        format_ms(k.created_ms),
                        k.description.clone(),
                    ]
                })
                .collect();
            Ok(write_table(
                out,
                &["ID", "ORG", "TAGS", "STATE", "CREATED", "DESCRIPTION"],
                &rows,
            )?)
        }
    }
}

pub fn key_revoke(data_dir: &Path, id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    open_existing_store(data_dir)?.revoke_installation_key(id)?;
    writeln!(
        out,
        "revoked installation key {id}; sensors already enrolled with it keep streaming"
    )?;
    Ok(())
}

pub fn apikey_create(data_dir: &Path, org: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let store = open_existing_store(data_dir)?;
    let org = store.find_org(org)?;
    let secret = auth::new_secret();
    let row = store.create_api_key(&org.id, auth::sha256(&secret))?;
    writeln!(out, "{}", auth::format_api_key(&row.id, &secret))?;
    Ok(())
}

pub fn sensors_list(
    data_dir: &Path,
    org: Option<&str>,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = open_existing_store(data_dir)?;
    let org_id = org_id_of(&store, org)?;
    let sensors = store.list_sensors(org_id.as_deref())?;
    match format {
        Format::Json => write_json_lines(out, &sensors),
        Format::Table => {
            let rows: Vec<Vec<String>> = sensors
                .iter()
                .map(|s| {
                    vec![
                        s.sid.clone(),
                        s.hostname.clone(),
                        s.tier.clone(),
                        s.tags.join(","),
                        if s.last_seen_ms == 0 {
                            "never".into()
                        } else {
                            format_ms(s.last_seen_ms)
                        },
                        if s.online { "yes" } else { "no" }.to_owned(),
                        s.ext_ip.clone(),
                    ]
                })
                .collect();
            Ok(write_table(
                out,
                &[
                    "SID",
                    "HOSTNAME",
                    "TIER",
                    "TAGS",
                    "LAST SEEN",
                    "ONLINE",
                    "EXT IP",
                ],
                &rows,
            )?)
        }
    }
}

/// Rejects a `--type` that no sensor sends and no stored event has.
fn reject_unknown_type(store: &dyn Store, query: &EventQuery) -> anyhow::Result<()> {
    if let Some((error, probe)) = query.unknown_type() {
        if store.query_events(&probe)?.is_empty() {
            return Err(error.into());
        }
    }
    Ok(())
}

pub fn events_query(
    data_dir: &Path,
    org: Option<&str>,
    filters: &FilterArgs,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = open_existing_store(data_dir)?;
    let mut query = filters.parse(picket_event::record::now_ms())?;
    query.org_id = org_id_of(&store, org)?;
    reject_unknown_type(&store, &query)?;
    let mut events = store.query_events(&query)?;
    // The store returns the newest first; people read oldest first.
    events.reverse();
    match format {
        Format::Json => {
            for event in &events {
                writeln!(out, "{}", event.record)?;
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = events.iter().map(|e| event_row(&e.record)).collect();
            write_table(out, &EVENT_HEADERS, &rows)?;
        }
    }
    Ok(())
}

/// Prints new matching events as they are stored until interrupted.
pub fn events_follow(
    data_dir: &Path,
    org: Option<&str>,
    filters: &FilterArgs,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = open_existing_store(data_dir)?;
    let mut query = filters.parse(picket_event::record::now_ms())?;
    query.org_id = org_id_of(&store, org)?;
    reject_unknown_type(&store, &query)?;
    query.after_num = Some(store.last_event_num()?);
    if format == Format::Table {
        write_stream_header(out, &EVENT_HEADERS)?;
    }
    loop {
        let events = store.query_events(&query)?;
        for event in &events {
            match format {
                Format::Json => writeln!(out, "{}", event.record)?,
                Format::Table => write_stream_row(out, &event_row(&event.record))?,
            }
        }
        out.flush()?;
        if let Some(last) = events.last() {
            query.after_num = Some(last.num);
        }
        if events.len() < query.limit {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
