//! The HTTP JSON API for people and tools, authenticated by org-scoped API
//! keys (`Authorization: Bearer PKA1.<id>.<secret>`). Every handler confines
//! itself to the key's organisation.
//!
//! | method and path | returns |
//! | --- | --- |
//! | `GET /healthz` | `ok`, no key needed |
//! | `GET /api/v1/sensors` | `{"sensors": [...]}` |
//! | `GET /api/v1/events?FILTERS` | `{"events": [...]}`, newest first |
//! | `GET /api/v1/events/follow?FILTERS` | new events as they are stored, one JSON record per line |
//! | `POST /api/v1/tasks` `{"sid", "command"}` | the queued task |
//! | `GET /api/v1/tasks/{id}` | the task and its state |
//!
//! FILTERS are the query parameters `sensor`, `type`, `container`, `pod`,
//! `namespace`, `since`, `from`, `to`, `limit` and `match` (repeatable), with
//! the meaning of the `events query` options of the same names.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth;
use crate::filter::{EventQuery, FilterArgs};
use crate::ingest::LiveSensors;
use crate::store::{Store, StoreError};
use crate::writer::error_chain;

/// How often `follow` looks for new events.
pub const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Maximum accepted request body, in bytes.
const MAX_BODY_BYTES: usize = 64 << 10;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub live: Arc<LiveSensors>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/sensors", get(list_sensors))
        .route("/api/v1/events", get(query_events))
        .route("/api/v1/events/follow", get(follow_events))
        .route("/api/v1/tasks", post(enqueue_task))
        .route("/api/v1/tasks/{id}", get(get_task))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error response: a status and a JSON `{"error": message}` body.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::SensorNotFound(_) | StoreError::TaskNotFound(_) => {
                ApiError(StatusCode::NOT_FOUND, error.to_string())
            }
            error => {
                tracing::error!(error = %error_chain(&error), "API store call failed");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server's store failed".into(),
                )
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store call panicked".into(),
            )
        })?
        .map_err(ApiError::from)
}

/// Resolves the request's API key to its organisation id.
async fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |message: &str| ApiError(StatusCode::UNAUTHORIZED, message.to_owned());
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <API key> header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <API key>"))?;
    let (id, secret) = auth::parse_api_key(token).ok_or_else(|| {
        unauthorized("the API key is malformed; create one with `picket-server apikey create`")
    })?;
    let id = id.to_owned();
    let key = blocking(&state.store, move |s| s.api_key(&id)).await?;
    match key {
        Some(key) if auth::secret_matches(secret, &key.secret_sha256) => Ok(key.org_id),
        _ => Err(unauthorized("the API key is not valid")),
    }
}

/// Parses FILTERS from a query string.
fn parse_filters(raw: Option<String>) -> Result<FilterArgs, ApiError> {
    let bad = |message: String| ApiError(StatusCode::BAD_REQUEST, message);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| bad(format!("invalid query string: {e}")))?;
    let mut args = FilterArgs::default();
    for (name, value) in pairs {
        match name.as_str() {
            "sensor" => args.sensor = Some(value),
            "type" => args.event_type = Some(value),
            "container" => args.container = Some(value),
            "pod" => args.pod = Some(value),
            "namespace" => args.namespace = Some(value),
            "since" => args.since = Some(value),
            "from" => args.from = Some(value),
            "to" => args.to = Some(value),
            "match" => args.matches.push(value),
            "limit" => {
                args.limit = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("invalid limit {value:?}: expected a number")))?,
                )
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(args)
}

async fn build_query(
    store: &Arc<dyn Store>,
    raw: Option<String>,
    org_id: String,
) -> Result<EventQuery, ApiError> {
    let args = parse_filters(raw)?;
    let mut query = args
        .parse(picket_event::record::now_ms())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    query.org_id = Some(org_id);
    // A type no sensor sends is a mistake unless such events are stored
    // (from a sensor newer than this server).
    if let Some((error, probe)) = query.unknown_type() {
        let stored = blocking(store, move |s| s.query_events(&probe)).await?;
        if stored.is_empty() {
            return Err(ApiError(StatusCode::BAD_REQUEST, error.to_string()));
        }
    }
    Ok(query)
}

async fn list_sensors(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let org_id = authorize(&state, &headers).await?;
    let mut sensors = blocking(&state.store, move |s| s.list_sensors(Some(&org_id))).await?;
    for sensor in &mut sensors {
        sensor.online = state.live.is_online(&sensor.sid);
    }
    Ok(Json(serde_json::json!({ "sensors": sensors })).into_response())
}

async fn query_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let org_id = authorize(&state, &headers).await?;
    let query = build_query(&state.store, raw, org_id).await?;
    let events = blocking(&state.store, move |s| s.query_events(&query)).await?;

    let mut body = String::from("{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event.record);
    }
    body.push_str("]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn follow_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let org_id = authorize(&state, &headers).await?;
    let mut query = build_query(&state.store, raw, org_id).await?;
    query.after_num = Some(blocking(&state.store, |s| s.last_event_num()).await?);

    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let store = state.store.clone();
    tokio::spawn(async move {
        loop {
            let round = query.clone();
            let events = match blocking(&store, move |s| s.query_events(&round)).await {
                Ok(events) => events,
                Err(_) => return,
            };
            for event in &events {
                let line = format!("{}\n", event.record);
                if tx.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
            }
            if let Some(last) = events.last() {
                query.after_num = Some(last.num);
            }
            if events.len() < query.limit {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest {
    sid: String,
    command: String,
}

async fn enqueue_task(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let org_id = authorize(&state, &headers).await?;
    let request: TaskRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid task request: {e}; expected {{\"sid\": ..., \"command\": ...}}"),
        )
    })?;
    if request.command.trim().is_empty()
        || request.command.len() > 4096
        || request.command.contains(['\n', '\0'])
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "command must be one line of 1 to 4096 bytes".into(),
        ));
    }

    // A sensor of another organisation is reported as not found, so a key
    // cannot probe for SIDs outside its organisation.
    let sid = request.sid.clone();
    let sensor = blocking(&state.store, move |s| s.sensor(&sid)).await?;
    if sensor.is_none_or(|sensor| sensor.org_id != org_id) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("sensor {} not found", request.sid),
        ));
    }
    let sid = request.sid.clone();
    let task = blocking(&state.store, move |s| {
        s.enqueue_task(&sid, &request.command)
    })
    .await?;
    state.live.wake_tasks(&task.sid);
    tracing::info!(task = %task.id, sid = %task.sid, "task queued");
    Ok((StatusCode::CREATED, Json(task)).into_response())
}

async fn get_task(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let org_id = authorize(&state, &headers).await?;
    let lookup = id.clone();
    let task = blocking(&state.store, move |s| s.task(&lookup)).await?;
    match task {
        Some(task) if task.org_id == org_id => Ok(Json(task).into_response()),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("task {id} not found"),
        )),
    }
}
