//! A small fake of the GCS XML API calls object_store makes: PUT (with
//! `x-goog-if-generation-match`), GET/HEAD, DELETE and list-type=2 listing. Every call runs
//! under one lock, so conditional writes are atomic. It is a test double for a server we cannot
//! run here, not a model of GCS beyond those calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use percent_encoding::percent_decode_str;

#[derive(Clone)]
struct Obj {
    body: Bytes,
    generation: u64,
    modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Obj>,
    next_generation: u64,
}

pub struct GcsFake {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GcsFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn etag(o: &Obj) -> String {
    format!("\"g{}\"", o.generation)
}

fn object_headers(o: &Obj) -> [(String, String); 4] {
    [
        ("etag".into(), etag(o)),
        ("x-goog-generation".into(), o.generation.to_string()),
        (
            "last-modified".into(),
            o.modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        ),
        ("content-type".into(), "application/octet-stream".into()),
    ]
}

fn with_headers(status: StatusCode, headers: [(String, String); 4], body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn handle(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/');
    let (_bucket, key) = match path.split_once('/') {
        Some((b, k)) => (b, percent_decode_str(k).decode_utf8_lossy().into_owned()),
        None => (path, String::new()),
    };
    let mut st = state.lock().unwrap();
    if key.is_empty() && method == Method::GET {
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    percent_decode_str(v).decode_utf8_lossy().into_owned(),
                )
            })
            .collect();
        let prefix = query.get("prefix").cloned().unwrap_or_default();
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult>");
        for (k, o) in st.objects.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            xml.push_str(&format!(
                "<Contents><Key>{}</Key><Size>{}</Size><LastModified>{}</LastModified><ETag>{}</ETag></Contents>",
                xml_escape(k),
                o.body.len(),
                o.modified.to_rfc3339(),
                xml_escape(&etag(o))
            ));
        }
        xml.push_str("</ListBucketResult>");
        return (StatusCode::OK, xml).into_response();
    }
    match method {
        Method::PUT => {
            let current = st.objects.get(&key).map(|o| o.generation);
            if let Some(want) = headers
                .get("x-goog-if-generation-match")
                .and_then(|v| v.to_str().ok())
            {
                let ok = match (want, current) {
                    ("0", None) => true,
                    (w, Some(g)) => w == g.to_string(),
                    _ => false,
                };
                if !ok {
                    return (StatusCode::PRECONDITION_FAILED, "precondition failed")
                        .into_response();
                }
            }
            st.next_generation += 1;
            let o = Obj {
                body,
                generation: 1_000 + st.next_generation,
                modified: chrono::Utc::now(),
            };
            st.objects.insert(key, o.clone());
            with_headers(StatusCode::OK, object_headers(&o), Bytes::new())
        }
        Method::GET | Method::HEAD => match st.objects.get(&key) {
            Some(o) => {
                let body = if method == Method::GET {
                    o.body.clone()
                } else {
                    Bytes::new()
                };
                with_headers(StatusCode::OK, object_headers(o), body)
            }
            None => (StatusCode::NOT_FOUND, "no such object").into_response(),
        },
        Method::DELETE => match st.objects.remove(&key) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => (StatusCode::NOT_FOUND, "no such object").into_response(),
        },
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

impl GcsFake {
    pub async fn start() -> GcsFake {
        let state = Arc::new(Mutex::new(State::default()));
        let app = Router::new().fallback(move |m: Method, u: Uri, h: HeaderMap, b: Bytes| {
            let state = state.clone();
            async move { handle(state, m, u, h, b).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GcsFake { addr, task }
    }

    /// The `google_service_account_key` store option pointing object_store at this fake.
    pub fn service_account_key(&self) -> String {
        serde_json::json!({
            "gcs_base_url": format!("http://{}", self.addr),
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": ""
        })
        .to_string()
    }
}
