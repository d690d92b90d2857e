//! A real HTTP server on 127.0.0.1 for the http processor's tests: each record's id picks
//! how it answers, and every request it receives is recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub data: serde_json::Value,
    pub idempotency_key: String,
    pub content_type: String,
    pub authorization: Option<String>,
    /// When the request arrived.
    pub at: Instant,
}

/// How `api-*` records are answered: the whole endpoint up or down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Api {
    /// 200 for every call.
    #[default]
    Up,
    /// 503 for every call, no Retry-After.
    Down,
    /// 429 with `Retry-After: N` (seconds) for every call.
    Busy(u32),
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    calls: Mutex<HashMap<String, usize>>,
    api: Mutex<Api>,
    /// Calls to `api-*` answered while it was not up.
    failed_api_calls: Mutex<usize>,
    /// Calls to `held-*` that have arrived (answered or still held).
    held_calls: AtomicUsize,
    /// Whether `held-*` calls are answered (200) rather than held.
    held_released: AtomicBool,
    /// Calls every answer waits for ([`Server::gather`]); 0 answers at once.
    gather: AtomicUsize,
    /// Calls arrived since gathering began.
    arrived: AtomicUsize,
}

/// Serves `app` on a free loopback port, on a thread of its own until the test ends.
pub fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// The server, running on its own thread until the test ends.
pub struct Server {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    pub fn start() -> Server {
        let shared = Arc::new(Shared::default());
        let addr = serve(
            Router::new()
                .route("/", post(answer))
                .with_state(shared.clone()),
        );
        Server { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Takes the `api-*` endpoint up or down.
    pub fn set_api(&self, api: Api) {
        *self.shared.api.lock().unwrap() = api;
    }

    /// Calls to `api-*` answered with a failure so far.
    pub fn failed_api_calls(&self) -> usize {
        *self.shared.failed_api_calls.lock().unwrap()
    }

    /// Calls to `held-*` received so far, whether still held or answered.
    pub fn held_calls(&self) -> usize {
        self.shared.held_calls.load(Ordering::SeqCst)
    }

    /// Holds every answer until `calls` calls have arrived (or 10 seconds passed), so that
    /// a test sees that many calls in flight at once however loaded the machine is.
    pub fn gather(&self, calls: usize) {
        self.shared.arrived.store(0, Ordering::SeqCst);
        self.shared.gather.store(calls, Ordering::SeqCst);
    }

    /// Answers the `held-*` calls held so far, and every later one, with 200.
    pub fn release_held(&self) {
        self.shared.held_released.store(true, Ordering::SeqCst);
    }
}

async fn answer(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let id = json["id"].as_str().unwrap_or_default().to_owned();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    shared.seen.lock().unwrap().push(Seen {
        id: id.clone(),
        data: json["data"].clone(),
        idempotency_key: header("idempotency-key").unwrap_or_default(),
        content_type: header("content-type").unwrap_or_default(),
        authorization: header("authorization"),
        at: Instant::now(),
    });
    let call = {
        let mut calls = shared.calls.lock().unwrap();
        let n = calls.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let gather = shared.gather.load(Ordering::SeqCst);
    if gather > 0 {
        shared.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.arrived.load(Ordering::SeqCst) < gather && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let kind = id.split('-').next().unwrap_or_default();
    if kind == "api" {
        let api = *shared.api.lock().unwrap();
        if api != Api::Up {
            *shared.failed_api_calls.lock().unwrap() += 1;
        }
        return match api {
            Api::Up => (StatusCode::OK, "ok").into_response(),
            Api::Down => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
            Api::Busy(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "busy",
            )
                .into_response(),
        };
    }
    match kind {
        // Held (no answer) until the test releases them, then 200: a downstream that hangs
        // while a test does something to the caller.
        "held" => {
            shared.held_calls.fetch_add(1, Ordering::SeqCst);
            while !shared.held_released.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (StatusCode::OK, format!("released {id}")).into_response()
        }
        "ok" => (StatusCode::OK, format!("accepted {id}")).into_response(),
        "created" => (StatusCode::CREATED, "").into_response(),
        "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "maintenance window").into_response(),
        "missing" => (StatusCode::NOT_FOUND, "x".repeat(1000)).into_response(),
        "invalid" => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "field 'value' is required",
        )
            .into_response(),
        "conflict" => StatusCode::CONFLICT.into_response(),
        // 500 on every call: with the default statuses a transient failure, so a record
        // whose own content breaks the downstream (a poison record) is retried.
        "internal" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "ratelimited" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "600")],
            "slow down",
        )
            .into_response(),
        "dated" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "Mon, 24 Nov 2025 15:00:00 GMT")],
            "",
        )
            .into_response(),
        "hostile" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "999999999")],
            "",
        )
            .into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            StatusCode::OK.into_response()
        }
        "flaky" if call == 1 => StatusCode::BAD_GATEWAY.into_response(),
        "flaky" => (StatusCode::OK, "second time lucky").into_response(),
        "huge" => {
            // 50 MiB, streamed.
            let chunks = (0..800).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'x'; 64 << 10])));
            Response::new(Body::from_stream(futures::stream::iter(chunks)))
        }
        _ => (StatusCode::BAD_REQUEST, "unknown test id").into_response(),
    }
}

/// A server that sends a status line and half a body, then closes the connection.
pub fn start_truncating_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial");
            let _ = stream.flush();
            drop(stream);
        }
    });
    addr
}

/// An address where nothing listens.
pub fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
